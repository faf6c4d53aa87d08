"""The training loop, one for every command: :func:`run`.

Every ``checkpoint_freq`` steps (and after the last) the run evaluates every
environment's ``in`` and ``out`` split, appends a record to ``results.jsonl``
(:mod:`experiments.run_dir`) and saves an orbax checkpoint
(:mod:`experiments.training.checkpoints`). Started again with the same ``output_dir`` and
arguments, a killed run resumes from its newest checkpoint that
restores and ends with the metrics of an uninterrupted run; a finished one is left as it
is. What a caller adds goes through :class:`Hooks`: a progress bar after each step, the
analysis's statistics of every step's stacked gradients (a
:class:`~experiments.training.steps.Probe`), a look at every record.

Devices: the run uses a mesh ``(domain, data)`` of the devices
(:mod:`experiments.training.parallel`). The host keeps at most
:data:`~experiments.training.processes.PROGRAMS_IN_FLIGHT` steps queued: it dispatches
step ``t + 1`` before it waits for step ``t``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from experiments import data, models
from experiments import run_dir as files
from experiments.cli import ConfigError
from experiments.training import parallel, processes
from experiments.training.checkpoints import CheckpointError, Checkpoints
from experiments.training.config import TrainConfig
from experiments.training.evaluation import evaluate
from experiments.training.optimizer import DIAGNOSTICS, build_optimizer
from experiments.training.steps import (
    Probe,
    create_train_state,
    init_variables,
    jitted_train_step,
)

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a caller adds to the loop.

    Attributes:
        after_step: called with each finished step and its metrics (device scalars:
            ``loss``, the algorithm's diagnostics, the probe's); with None for the steps
            a resumed run skips.
        at_checkpoint: called with each new record, after its checkpoint.
        probe: statistics of every step's stacked gradients, computed in the step; its
            metrics reach ``after_step``. Its state is not checkpointed.
    """

    after_step: Callable[[int, Mapping[str, jax.Array] | None], None] | None = None
    at_checkpoint: Callable[[Record], None] | None = None
    probe: Probe | None = None


def start_distributed(config: TrainConfig) -> None:
    """Starts :mod:`jax.distributed` as ``config.layout.distributed`` says.

    Raises:
        ConfigError: it was asked for and could not start.
    """
    mode = config.layout.distributed
    try:
        processes.initialize_distributed(mode)
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
    model_name: str,
    num_classes: int,
    algorithm: str,
    hparams_json: str,
    steps: int,
    num_domains: int,
    dtype: str = "float32",
) -> tuple[nn.Module, optax.GradientTransformation]:
    """The same objects for the same arguments, so that the runs of one process that
    differ only in data (test env, trial) or seed reuse one compilation of the steps.

    The optimizer is built with seed 0: corgrad_jax's transformations keep their PRNG
    key in their state, seeded in ``init``, and ``update`` does not depend on the seed
    (``tests/experiments/test_algorithms.py`` checks it), so each run's seed enters
    through its initial state (``create_train_state(init_tx=...)``). ``steps`` is 0
    unless the algorithm depends on the run's length (CorGrad's decaying alpha).
    ``num_domains`` is the number of training domains; ``dtype`` the model's compute
    dtype.
    """
    hparams = json.loads(hparams_json)
    model = models.get_model(model_name, num_classes, hparams, dtype=dtype)
    return model, build_optimizer(
        algorithm, hparams, seed=0, total_steps=max(steps, 2), num_domains=num_domains)


def build_model_and_optimizer(
    config: TrainConfig, spec: data.DatasetSpec, hparams: Mapping[str, Any]
) -> tuple[nn.Module, optax.GradientTransformation]:
    """:func:`model_and_optimizer` of a resolved ``config``."""
    assert config.steps is not None
    entry = config.algorithm_entry()
    return model_and_optimizer(
        config.model_name(),
        spec.num_classes,
        config.algorithm,
        json.dumps(dict(hparams), sort_keys=True),
        config.steps if entry.uses_total_steps(hparams) else 0,
        len(spec.train_envs(config.test_envs)),
        config.dtype,
    )


def format_record(record: Record, test_envs: Sequence[int], num_envs: int) -> str:
    """One progress line of a record: loss, validation and test accuracy, diagnostics."""
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
    hooks: Hooks = Hooks(),
    log: Callable[[str], None] = print,
) -> list[Record]:
    """Trains one run (or resumes it) and returns its records, one per checkpoint.

    Args:
        config: the run's arguments.
        hooks: what the caller adds (progress, probes, a look at each record).
        log: where progress lines go.

    Returns:
        The records of ``results.jsonl``.

    Raises:
        ConfigError: invalid arguments, an ``output_dir`` holding something else, or no
            checkpoint of the run restores.
    """
    config = config.resolved()
    assert config.steps is not None and config.checkpoint_freq is not None
    start_distributed(config)
    writer = processes.is_writer()  # process 0 writes; every process checkpoints
    if not writer:
        log = lambda _: None  # noqa: E731
    spec = config.dataset_spec()
    hparams = config.run_hparams()
    run_dir = files.as_path(config.output_dir)  # a local directory or gs://...
    exists = files.check_output_dir(run_dir, config.run_args())
    results_path = run_dir / files.RESULTS
    if exists and (run_dir / files.DONE).exists():
        log(f"{run_dir} is finished already; nothing to do")
        if hooks.after_step is not None:
            for step in range(config.steps):
                hooks.after_step(step, None)
        return files.read_records(results_path)

    try:
        dataset = data.load_dataset(
            spec,
            config.data_dir,
            test_envs=config.test_envs,
            holdout_fraction=config.holdout_fraction,
            trial_seed=config.trial_seed,
            batch_size=int(hparams["batch_size"]),
            seed=config.seed,
            augmentation=config.augmentation,
        )
    except (ValueError, FileNotFoundError) as error:  # a bad folder, no dataset folder
        raise ConfigError(str(error)) from None
    model, tx = build_model_and_optimizer(config, spec, hparams)
    init_tx = build_optimizer(
        config.algorithm, hparams, seed=config.seed, total_steps=config.steps,
        num_domains=len(spec.train_envs(config.test_envs)))
    init_key, dropout_root = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = None
    if config.pretrained is not None:
        load_pretrained = models.get_model_entry(config.model_name()).load_pretrained
        assert load_pretrained is not None  # checked by resolved()
        variables = init_variables(model, tuple(dataset.input_shape), init_key)
        try:
            variables = load_pretrained(config.pretrained, variables)
        except (ValueError, OSError) as error:  # not a ResNet-18 state dict, unreadable
            raise ConfigError(f"pretrained weights {config.pretrained}: {error}") from None
    num_domains, batch_size = len(dataset.train_envs), int(hparams["batch_size"])
    plan = make_plan(config, num_domains, batch_size)
    if plan.num_devices < jax.device_count():
        log(
            f"using {plan.num_devices} of {jax.device_count()} devices: the data axis must "
            f"divide batch_size {batch_size} (choose with --num_devices)"
        )
    state = create_train_state(init_key, model, tx, dataset.input_shape, variables, init_tx=init_tx)
    state = plan.put_state(state)
    probe_state = None
    if hooks.probe is not None:  # replicated on the mesh, as the step returns it
        probe_state = jax.device_put(hooks.probe.init(state.params), plan.sharding(P()))
    if not exists and writer:
        files.create_output_dir(run_dir, config.run_args())
    processes.sync("output_dir")

    checkpoints = Checkpoints(run_dir / files.CHECKPOINTS)
    try:
        last_checkpoint, state = checkpoints.restore_newest(state, log=log, move_damaged=writer)
    except CheckpointError as error:
        raise ConfigError(str(error)) from None
    processes.sync("restored")
    records = files.truncate_records(results_path, last_checkpoint, write=writer)
    start = 0
    if last_checkpoint is not None:
        start = last_checkpoint + 1
        log(f"{run_dir}: resumed from the checkpoint of step {last_checkpoint}")
        if hooks.after_step is not None:
            for step in range(start):
                hooks.after_step(step, None)

    in_sizes = [dataset.split_size(env, "in") for env in dataset.train_envs]
    steps_per_epoch = min(in_sizes) / batch_size
    window: list[dict[str, jax.Array]] = []
    window_start = time.perf_counter()
    previous: tuple[int, dict[str, jax.Array]] | None = None

    def finish(step_and_metrics: tuple[int, dict[str, jax.Array]]) -> None:
        jax.block_until_ready(step_and_metrics[1])
        if hooks.after_step is not None:
            hooks.after_step(*step_and_metrics)

    for step in range(start, config.steps):
        batch = plan.global_batch(  # uint8 images where the device augments them
            functools.partial(dataset.stored_train_batch, step), num_domains, batch_size
        )
        if dataset.device_transform is not None:
            batch = dataset.device_transform.train(batch, step)
        state, metrics, probe_state = jitted_train_step(
            state,
            batch,
            jax.random.fold_in(dropout_root, step),
            probe_state,
            gradient_method=config.gradient_method,
            plan=plan,
            probe=hooks.probe,
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
        record: Record = {"step": step, **means}
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
            files.append_record(results_path, record)
        checkpoints.save(step, state)
        records.append(record)
        if hooks.at_checkpoint is not None:
            hooks.at_checkpoint(record)
        log(format_record(record, config.test_envs, len(dataset.environments)))
        window = []
        window_start = time.perf_counter()
    checkpoints.close()
    if writer:
        files.write_atomically(run_dir / files.DONE, "done\n")
    processes.sync("done")
    return records
