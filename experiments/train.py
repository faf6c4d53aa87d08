"""One training run: ``python -m experiments.train`` (DomainBed's ``train.py``).

Example::

    python -m experiments.train --dataset RotatedMNIST --algorithm corgrad \\
        --test_envs 0 --steps 500 --output_dir runs/rmnist_corgrad

Every ``checkpoint_freq`` steps (and after the last) the run evaluates every
environment's ``in`` and ``out`` split, appends a record to ``results.jsonl`` and saves
an orbax checkpoint (:mod:`experiments.outputs`). Started again with the same
``--output_dir`` and arguments, a killed run resumes from its last checkpoint and ends
with the metrics of an uninterrupted run; a finished one is left as it is.

Python API: :func:`run` takes a :class:`TrainConfig` (the flags, as a dataclass) and
returns the records; :func:`main` is the command line (exit code 2 on bad input).

Devices: the run uses every device (``--num_devices`` the first N) on a mesh
``(domain, data)`` (:mod:`experiments.parallel`): batches split over the data axis,
``--domain_parallel K`` splits the training domains into K groups of devices, and
``--param_sharding fsdp`` splits the train state too. On several hosts every process
runs the same command (``--distributed``). The layout does not change the results (up to
float rounding), is not part of the run's arguments, and may change on resume. With
``--dry_run`` the command prints the sharding plan for ``--num_devices`` devices (virtual
CPU devices when this machine has fewer) and trains nothing.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from experiments import data, outputs, parallel, trainer
from experiments.algorithms import (
    ALGORITHMS,
    DIAGNOSTICS,
    build_optimizer,
    uses_total_steps,
)
from experiments.cli import ArgumentParser, ConfigError, json_object
from experiments.hparams_registry import get_hparams
from experiments.models import get_model

GRADIENT_METHODS = ("loop", "vmap", "vjp")
LOCATION_FIELDS = ("output_dir", "data_dir", "layout")
"""Fields of :class:`TrainConfig` that do not change the results, so not in ``args.json``:
where the files and the arrays live."""
EVAL_BATCH_SIZE = 64
"""Evaluation examples per device and program: the fastest per example for MNIST_CNN on a
2-core CPU."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The arguments of one run, mirroring the command-line flags.

    Attributes:
        dataset: ``RotatedMNIST``, ``ColoredMNIST``, a folder dataset or a path.
        algorithm: one of :data:`experiments.algorithms.ALGORITHMS`.
        test_envs: indices of the held-out environments.
        output_dir: the run directory (results, checkpoints, ``done``).
        data_dir: root of the folder datasets (unused for the embedded ones).
        steps: number of updates; None for DomainBed's dataset default (5,000).
        checkpoint_freq: steps between evaluations and checkpoints; None for the
            dataset default (100 for MNIST).
        hparams: values replacing the registry's (``--hparams`` JSON).
        hparams_seed: 0 for the default hparams, otherwise a random-search draw.
        trial_seed: seeds the data splits (and the embedded data's construction).
        seed: seeds initialization, minibatch order, dropout and the algorithm.
        holdout_fraction: share of every environment held out as its ``out`` split.
        pretrained: torchvision ResNet-18 weights to start from (ResNet datasets only).
        gradient_method: how per-domain gradients are computed: ``loop`` (fastest on
            CPU), ``vmap`` or ``vjp``.
        max_eval_examples: evaluate at most this many examples per split (None: all);
            for quick tests.
        layout: the devices and hosts the run uses (the device flags).
    """

    dataset: str = "RotatedMNIST"
    algorithm: str = "erm"
    test_envs: tuple[int, ...] = (0,)
    output_dir: str = "train_output"
    data_dir: str | None = None
    steps: int | None = None
    checkpoint_freq: int | None = None
    hparams: dict[str, Any] | None = None
    hparams_seed: int = 0
    trial_seed: int = 0
    seed: int = 0
    holdout_fraction: float = 0.2
    pretrained: str | None = None
    gradient_method: str = "loop"
    max_eval_examples: int | None = None
    layout: parallel.DeviceLayout = parallel.DeviceLayout()

    def resolved(self, *, check_files: bool = True) -> TrainConfig:
        """This config with the dataset defaults filled in, after checking every field.

        ``check_files=False`` skips the checks of ``data_dir`` and ``pretrained`` (a dry
        run plans a folder dataset known by name without its files).

        Raises:
            ConfigError: a field is invalid (one line, naming it and what was expected).
        """
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(
                f"unknown algorithm {self.algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
            )
        try:
            data.check_dataset_name(self.dataset)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        environments = data.known_environments(self.dataset)
        if environments is not None:
            try:
                data.check_test_envs(self.dataset, environments, tuple(self.test_envs))
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if check_files and data.needs_data_dir(self.dataset) and environments is not None:
            if self.data_dir is None:
                raise ConfigError(f"dataset {self.dataset} is read from disk: pass --data_dir")
        if check_files and self.data_dir is not None and data.needs_data_dir(self.dataset):
            if not Path(self.data_dir).is_dir():
                raise ConfigError(f"data_dir {self.data_dir} does not exist or is not a directory")
        if self.gradient_method not in GRADIENT_METHODS:
            raise ConfigError(
                f"unknown gradient method {self.gradient_method!r}; expected one of "
                f"{', '.join(GRADIENT_METHODS)}"
            )
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")
        try:
            self.layout.check()
        except parallel.PlanError as error:
            raise ConfigError(str(error)) from None
        for name in ("steps", "checkpoint_freq", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if check_files and self.pretrained is not None and not Path(self.pretrained).is_file():
            raise ConfigError(f"pretrained weights {self.pretrained} do not exist")
        self.run_hparams()
        return dataclasses.replace(
            self,
            test_envs=tuple(int(env) for env in self.test_envs),
            steps=self.steps or data.default_steps(self.dataset),
            checkpoint_freq=self.checkpoint_freq or data.default_checkpoint_freq(self.dataset),
        )

    def run_hparams(self) -> dict[str, Any]:
        """The run's hyperparameters: the registry's for the seeds, with the overrides.

        Raises:
            ConfigError: an override names a hyperparameter the algorithm lacks.
        """
        try:
            return get_hparams(
                self.algorithm,
                self.dataset,
                hparams_seed=self.hparams_seed,
                trial_seed=self.trial_seed,
                overrides=self.hparams,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def run_args(self) -> dict[str, Any]:
        """The arguments that define the run's results: all but where files and arrays
        live (:data:`LOCATION_FIELDS`)."""
        args = dataclasses.asdict(self)
        for name in LOCATION_FIELDS:
            args.pop(name)
        args["test_envs"] = list(self.test_envs)
        return args


# ----------------------------------------------------------------------------------------
# Jitted steps, shared by every run of the process.

jitted_train_step = jax.jit(
    trainer.train_step, static_argnames=("gradient_method", "plan"), donate_argnums=0
)
jitted_eval_step = jax.jit(trainer.eval_step)


def start_distributed(config: TrainConfig) -> None:
    """Starts :mod:`jax.distributed` as ``config.layout.distributed`` says.

    Raises:
        ConfigError: it was asked for and could not start.
    """
    mode = config.layout.distributed
    try:
        parallel.initialize_distributed(mode)
    except ValueError as error:
        raise ConfigError(f"--distributed {mode}: {error}") from None


def make_plan(config: TrainConfig, num_domains: int, batch_size: int) -> parallel.ShardingPlan:
    """The mesh of ``config`` for batches of ``num_domains`` x ``batch_size`` examples.

    Raises:
        ConfigError: the layout flags do not fit the devices or the batch.
    """
    try:
        return config.layout.plan(num_domains, batch_size)
    except parallel.PlanError as error:
        raise ConfigError(str(error)) from None


@functools.lru_cache(maxsize=32)
def model_and_optimizer(
    input_shape: tuple[int, ...],
    num_classes: int,
    algorithm: str,
    hparams_json: str,
    steps: int,
) -> tuple[nn.Module, optax.GradientTransformation]:
    """The same objects for the same arguments, so that the runs of one process that
    differ only in data (test env, trial) or seed reuse one compilation of the steps.

    The optimizer is built with seed 0: corgrad_jax's transformations keep their PRNG
    key in their state, seeded in ``init``, and ``update`` does not depend on the seed
    (``tests/experiments/test_algorithms.py`` checks it), so each run's seed enters
    through its initial state (``create_train_state(init_tx=...)``). ``steps`` is 0
    unless the algorithm depends on the run's length (CorGrad's decaying alpha).
    """
    hparams = json.loads(hparams_json)
    model = get_model(input_shape, num_classes, hparams)
    return model, build_optimizer(algorithm, hparams, seed=0, total_steps=max(steps, 2))


def evaluate(
    state: trainer.TrainState,
    dataset: data.EnvironmentSplits,
    *,
    max_examples: int | None = None,
    plan: parallel.ShardingPlan | None = None,
) -> dict[str, float]:
    """Accuracy on every environment's ``in`` and ``out`` split: ``env{i}_{split}_acc``.

    On a ``plan``, every batch is split over all devices, and on several processes each
    reads an equal share of the split (padded and masked), so every example counts once.
    """
    state = state.replace(tx=None, opt_state=None)  # one compilation for every algorithm
    batch_size = min(EVAL_BATCH_SIZE, max_examples or EVAL_BATCH_SIZE)
    place: Callable[[dict[str, np.ndarray]], Any] = lambda batch: batch  # noqa: E731
    processes, process = 1, 0
    if plan is not None:
        batch_size = plan.eval_batch_size(batch_size)
        place = plan.global_eval_batch
        processes, process = jax.process_count(), jax.process_index()
    local_size = batch_size // processes
    totals: dict[str, int] = {}

    def correct_counts() -> Iterator[tuple[str, jax.Array]]:
        """Dispatches the eval step of every batch, lazily: (key, correct count)."""
        for env in range(len(dataset.environments)):
            for split in ("in", "out"):
                key = f"env{env}_{split}_acc"
                total = dataset.split_size(env, split)
                if max_examples is not None:
                    total = min(total, max_examples)
                totals[key] = total
                share = -(-total // processes)
                start, stop = min(total, process * share), min(total, (process + 1) * share)
                batches = dataset.eval_batches(env, split, local_size, start, stop)
                for _ in range(-(-share // local_size)):
                    batch = next(batches, None)  # None: this process's share is exhausted
                    size = 0 if batch is None else min(len(batch["y"]), stop - start)
                    padded = {
                        "x": np.zeros((local_size, *dataset.input_shape), np.float32),
                        "y": np.zeros(local_size, np.int32),
                        "mask": np.arange(local_size) < size,
                    }
                    if size:
                        padded["x"][:size] = batch["x"][:size]
                        padded["y"][:size] = batch["y"][:size]
                    yield key, jitted_eval_step(state, place(padded))
                    start += size

    corrects: dict[str, int] = collections.defaultdict(int)
    for key, count in parallel.in_flight(correct_counts()):  # a bounded queue of programs
        corrects[key] += int(count)
    return {
        key: float(corrects[key] / total) if total else float("nan")
        for key, total in totals.items()
    }


def check_output_dir(config: TrainConfig) -> bool:
    """Whether ``output_dir`` holds this very run already (False: it is new or empty).

    Raises:
        ConfigError: it holds a run with other arguments, or something else.
    """
    run_dir = Path(config.output_dir)
    args_path = run_dir / outputs.ARGS
    expected = config.run_args()
    if args_path.exists():
        try:
            stored = json.loads(args_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise ConfigError(f"output_dir {run_dir} has an unreadable {outputs.ARGS}") from None
        if stored != expected:
            differences = ", ".join(
                f"{key} {expected.get(key)!r} here, {stored.get(key)!r} there"
                for key in sorted(set(stored) | set(expected))
                if stored.get(key) != expected.get(key)
            )
            raise ConfigError(
                f"output_dir {run_dir} holds a run with different arguments ({differences}); "
                "refusing to resume it: choose another --output_dir"
            )
        return True
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(
            f"output_dir {run_dir} is not an empty directory and holds no run of this "
            "trainer; refusing to write into it"
        )
    return False


def _create_output_dir(config: TrainConfig) -> None:
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config.run_args(), indent=2, sort_keys=True) + "\n"
    outputs.write_atomically(run_dir / outputs.ARGS, text)


def _format_record(record: dict[str, Any], test_envs: Sequence[int], num_envs: int) -> str:
    train_envs = [env for env in range(num_envs) if env not in test_envs]
    validation = np.mean([record[f"env{env}_out_acc"] for env in train_envs])
    test = np.mean([record[f"env{env}_in_acc"] for env in test_envs])
    return (
        f"step {record['step']:>5} | loss {record['loss']:.4f} | "
        f"train-domain val acc {100 * validation:5.1f} | test-domain acc {100 * test:5.1f} | "
        f"mod. freq. {record['modification_frequency']:.3f} | {record['step_time']:.2f} s/step"
    )


def run(
    config: TrainConfig,
    *,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Trains one run (or resumes it) and returns its records, one per checkpoint.

    Args:
        config: the run's arguments.
        on_step: called with the step index after each finished step (progress bars);
            also called for the steps a resumed run skips.
        log: where progress lines go.

    Returns:
        The records of ``results.jsonl``.

    Raises:
        ConfigError: invalid arguments, or an ``output_dir`` holding something else.
    """
    config = config.resolved()
    assert config.steps is not None and config.checkpoint_freq is not None
    start_distributed(config)
    writer = parallel.is_writer()  # process 0 writes; every process checkpoints
    if not writer:
        log = lambda _: None  # noqa: E731
    hparams = config.run_hparams()
    exists = check_output_dir(config)
    run_dir = Path(config.output_dir)
    results_path = run_dir / outputs.RESULTS
    if exists and (run_dir / outputs.DONE).exists():
        log(f"{run_dir} is finished already; nothing to do")
        if on_step is not None:
            for step in range(config.steps):
                on_step(step)
        return outputs.read_records(results_path)

    try:
        dataset = data.get_dataset(
            config.dataset,
            config.data_dir,
            test_envs=config.test_envs,
            holdout_fraction=config.holdout_fraction,
            trial_seed=config.trial_seed,
            batch_size=int(hparams["batch_size"]),
            seed=config.seed,
        )
    except (ValueError, FileNotFoundError) as error:  # bad test env, no dataset folder
        raise ConfigError(str(error)) from None
    model, tx = model_and_optimizer(
        tuple(dataset.input_shape),
        dataset.num_classes,
        config.algorithm,
        json.dumps(hparams, sort_keys=True),
        config.steps if uses_total_steps(config.algorithm, hparams) else 0,
    )
    init_tx = build_optimizer(config.algorithm, hparams, seed=config.seed, total_steps=config.steps)
    init_key, dropout_root = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = None
    if config.pretrained is not None:
        if tuple(dataset.input_shape[:2]) == (28, 28):
            raise ConfigError("--pretrained needs a ResNet dataset; MNIST_CNN has no weights")
        from experiments.pretrained import load_resnet18_weights

        variables = trainer.init_variables(model, tuple(dataset.input_shape), init_key)
        try:
            variables = load_resnet18_weights(config.pretrained, variables)
        except (ValueError, OSError) as error:  # not a ResNet-18 state dict, unreadable
            raise ConfigError(f"pretrained weights {config.pretrained}: {error}") from None
    num_domains, batch_size = len(dataset.train_envs), int(hparams["batch_size"])
    plan = make_plan(config, num_domains, batch_size)
    if plan.num_devices < jax.device_count():
        log(
            f"using {plan.num_devices} of {jax.device_count()} devices: the data axis must "
            f"divide batch_size {batch_size} (choose with --num_devices)"
        )
    state = trainer.create_train_state(
        init_key, model, tx, dataset.input_shape, variables, init_tx=init_tx
    )
    state = plan.put_state(state)
    if not exists and writer:
        _create_output_dir(config)
    parallel.sync("output_dir")

    checkpoints = outputs.Checkpoints(run_dir / outputs.CHECKPOINTS)
    try:
        last_checkpoint, state = checkpoints.restore_newest(state, log=log, move_damaged=writer)
    except outputs.CheckpointError as error:
        raise ConfigError(str(error)) from None
    parallel.sync("restored")
    records = outputs.truncate_records(results_path, last_checkpoint, write=writer)
    start = 0
    if last_checkpoint is not None:
        start = last_checkpoint + 1
        log(f"{run_dir}: resumed from the checkpoint of step {last_checkpoint}")
        if on_step is not None:
            for step in range(start):
                on_step(step)

    in_sizes = [dataset.split_size(env, "in") for env in dataset.train_envs]
    steps_per_epoch = min(in_sizes) / batch_size
    window: list[dict[str, jax.Array]] = []
    window_start = time.perf_counter()
    previous: tuple[int, dict[str, jax.Array]] | None = None

    def finish(step_and_metrics: tuple[int, dict[str, jax.Array]]) -> None:
        jax.block_until_ready(step_and_metrics[1])
        if on_step is not None:
            on_step(step_and_metrics[0])

    for step in range(start, config.steps):
        batch = plan.global_batch(
            functools.partial(dataset.train_batch, step), num_domains, batch_size
        )
        state, metrics = jitted_train_step(
            state,
            batch,
            jax.random.fold_in(dropout_root, step),
            gradient_method=config.gradient_method,
            plan=plan,
        )
        if previous is not None:  # keep one step in flight, report the one before
            finish(previous)
        previous = (step, metrics)
        window.append(metrics)
        if step % config.checkpoint_freq != 0 and step != config.steps - 1:
            continue
        finish(previous)
        previous = None
        means = {key: float(np.mean([m[key] for m in window])) for key in ("loss", *DIAGNOSTICS)}
        step_time = (time.perf_counter() - window_start) / len(window)
        record: dict[str, Any] = {"step": step, **means}
        if steps_per_epoch:
            record["epoch"] = step / steps_per_epoch
        record.update(evaluate(state, dataset, max_examples=config.max_eval_examples, plan=plan))
        record.update(
            step_time=step_time,
            hparams=hparams,
            args=config.run_args(),
            environments=list(dataset.environments),
        )
        if writer:  # the record first, then its checkpoint
            outputs.append_record(results_path, record)
        checkpoints.save(step, state)
        records.append(record)
        log(_format_record(record, config.test_envs, len(dataset.environments)))
        window = []
        window_start = time.perf_counter()
    checkpoints.close()
    if writer:
        outputs.write_atomically(run_dir / outputs.DONE, "done\n")
    parallel.sync("done")
    return records


# ----------------------------------------------------------------------------------------
# Command line.


def add_device_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The flags of :class:`~experiments.parallel.DeviceLayout`, as a group; read them
    back with :func:`layout_from_args`."""
    devices = parser.add_argument_group("devices (do not change the results)")
    devices.add_argument(
        "--num_devices", type=int, default=None, help="default: all that divide the batch"
    )
    devices.add_argument(
        "--domain_parallel", type=int, default=1, help="devices along the domain axis"
    )
    devices.add_argument(
        "--param_sharding", default="replicated", help=", ".join(parallel.PARAM_SHARDINGS)
    )
    devices.add_argument(
        "--distributed",
        default="auto",
        help="start jax.distributed: auto (if JAX_COORDINATOR_ADDRESS or JAX_NUM_PROCESSES "
        "is set), on (TPU pods, SLURM, Open MPI), off",
    )
    return devices


def layout_from_args(args: argparse.Namespace) -> parallel.DeviceLayout:
    """The :class:`~experiments.parallel.DeviceLayout` of parsed device flags."""
    names = [field.name for field in dataclasses.fields(parallel.DeviceLayout)]
    return parallel.DeviceLayout(**{name: getattr(args, name) for name in names})


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m experiments.train`` (DomainBed's names)."""
    defaults = TrainConfig()
    parser = ArgumentParser(
        prog="python -m experiments.train",
        description="Train one domain-generalization run (DomainBed-style).",
    )
    parser.add_argument("--dataset", default=defaults.dataset)
    parser.add_argument("--data_dir", default=None, help="root of folder datasets")
    parser.add_argument("--algorithm", default=defaults.algorithm, help=", ".join(ALGORITHMS))
    parser.add_argument("--test_envs", type=int, nargs="+", default=list(defaults.test_envs))
    parser.add_argument("--steps", type=int, default=None, help="default: 5000 (DomainBed)")
    parser.add_argument("--checkpoint_freq", type=int, default=None, help="default: dataset's")
    parser.add_argument("--output_dir", default=defaults.output_dir)
    parser.add_argument("--hparams", type=json_object, default=None, help="JSON overrides")
    parser.add_argument("--hparams_seed", type=int, default=0, help="0: the defaults")
    parser.add_argument("--trial_seed", type=int, default=0, help="seeds the data splits")
    parser.add_argument("--seed", type=int, default=0, help="seeds everything else")
    parser.add_argument("--holdout_fraction", type=float, default=defaults.holdout_fraction)
    parser.add_argument("--pretrained", default=None, help="torchvision ResNet-18 weights")
    parser.add_argument("--gradient_method", default="loop", help=", ".join(GRADIENT_METHODS))
    parser.add_argument("--max_eval_examples", type=int, default=None, help="per split")
    devices = add_device_arguments(parser)
    devices.add_argument(
        "--dry_run",
        nargs="?",
        const="plan",
        choices=("plan", "compile"),
        help="print the sharding plan and exit; 'compile' adds XLA's memory analysis",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed flags."""
    names = {field.name for field in dataclasses.fields(TrainConfig)}  # not --dry_run
    values = {key: value for key, value in vars(args).items() if key in names}
    values["test_envs"] = tuple(values["test_envs"])
    return TrainConfig(**values, layout=layout_from_args(args))


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.train``: returns the exit code (2 on bad input)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    config = config_from_args(args)
    from tqdm import tqdm

    try:
        if args.dry_run is not None:
            from experiments.dry_run import dry_run

            return dry_run(config, argv, compile_step=args.dry_run == "compile")
        resolved = config.resolved()
        start_distributed(resolved)
        check_output_dir(resolved)
        bars: list[tqdm] = []  # made at the first step: an error before it prints alone

        def on_step(_: int) -> None:
            if not bars:
                bars.append(tqdm(total=resolved.steps, desc=resolved.algorithm, unit="step",
                                 delay=1, disable=not parallel.is_writer()))
            bars[0].update()

        try:
            run(config, on_step=on_step, log=tqdm.write)
        finally:
            for bar in bars:
                bar.close()
    except ConfigError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(config.output_dir)
    if parallel.is_writer():
        print(f"results: {run_dir / outputs.RESULTS}")
        print(f"checkpoints: {run_dir / outputs.CHECKPOINTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
