"""Every test env x algorithm x hparams draw x trial: ``python -m experiments.sweep``.

DomainBed's ``sweep.py launch``, run in this process (one compilation of the train step
serves all runs of an algorithm). Each run has its own directory under ``--output_dir``;
a sweep started again skips the finished runs and resumes the interrupted one from its
last checkpoint. Afterwards, ``python -m experiments.collect_results DIR`` makes the
table.

Example::

    python -m experiments.sweep --datasets RotatedMNIST --algorithms erm corgrad \\
        --n_trials 3 --steps 5000 --output_dir runs/sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from experiments import data, parallel
from experiments.algorithms import ALGORITHMS
from experiments.cli import ArgumentParser, ConfigError, json_object
from experiments.seeding import seed_hash
from experiments.train import (
    GRADIENT_METHODS,
    TrainConfig,
    add_device_arguments,
    check_output_dir,
    layout_from_args,
    run,
    start_distributed,
)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs.

    Attributes:
        output_dir: root of the run directories.
        datasets: dataset names (or paths).
        algorithms: algorithm names.
        test_envs: the test environments to hold out one at a time; None for all.
        n_hparams: hparams draws per setting: seeds 0 (the defaults) to n_hparams - 1.
        n_trials: trials per setting: trial seeds 0 to n_trials - 1.
        steps: steps per run (None: the dataset's default, 5,000).
        checkpoint_freq: steps between checkpoints (None: the dataset's default).
        data_dir: root of the folder datasets.
        holdout_fraction: share of each environment held out for validation.
        hparams: overrides applied to every run.
        gradient_method: how the per-domain gradients are computed.
        max_eval_examples: cap on evaluated examples per split (None: all).
        layout: every run's devices and hosts.
    """

    output_dir: str
    datasets: tuple[str, ...] = ("RotatedMNIST",)
    algorithms: tuple[str, ...] = ALGORITHMS
    test_envs: tuple[int, ...] | None = None
    n_hparams: int = 1
    n_trials: int = 3
    steps: int | None = None
    checkpoint_freq: int | None = None
    data_dir: str | None = None
    holdout_fraction: float = 0.2
    hparams: dict | None = None
    gradient_method: str = "loop"
    max_eval_examples: int | None = None
    layout: parallel.DeviceLayout = parallel.DeviceLayout()


def _run_name(
    dataset: str, algorithm: str, test_envs: Sequence[int], hparams_seed: int, trial_seed: int
) -> str:
    envs = "_".join(str(env) for env in test_envs)
    return f"{Path(dataset).name}-{algorithm}-env{envs}-hp{hparams_seed}-trial{trial_seed}"


def _environments(dataset: str, data_dir: str | None) -> tuple[str, ...]:
    environments = data.known_environments(dataset)
    if environments is None:  # a directory of domain folders: one sub-folder per domain
        data.check_dataset_name(dataset)
        environments = tuple(sorted(p.name for p in Path(dataset).iterdir() if p.is_dir()))
    return environments


def make_configs(sweep: SweepConfig) -> list[TrainConfig]:
    """The runs of a sweep, in the order they run: trials outermost, so that an early
    stop leaves complete comparisons. Seeds follow DomainBed's ``make_args_list``.

    Raises:
        ConfigError: an unknown dataset or algorithm, or a test env out of range.
    """
    for algorithm in sweep.algorithms:
        if algorithm not in ALGORITHMS:
            raise ConfigError(
                f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
            )
    if sweep.n_trials < 1 or sweep.n_hparams < 1:
        raise ConfigError("n_trials and n_hparams must be at least 1")
    configs = []
    for trial_seed in range(sweep.n_trials):
        for hparams_seed in range(sweep.n_hparams):
            for dataset in sweep.datasets:
                try:
                    environments = _environments(dataset, sweep.data_dir)
                except ValueError as error:
                    raise ConfigError(str(error)) from None
                test_envs = sweep.test_envs
                if test_envs is None:
                    test_envs = tuple(range(len(environments)))
                for test_env in test_envs:
                    for algorithm in sweep.algorithms:
                        name = _run_name(dataset, algorithm, [test_env], hparams_seed, trial_seed)
                        configs.append(
                            TrainConfig(
                                dataset=dataset,
                                algorithm=algorithm,
                                test_envs=(test_env,),
                                output_dir=str(Path(sweep.output_dir) / name),
                                data_dir=sweep.data_dir,
                                steps=sweep.steps,
                                checkpoint_freq=sweep.checkpoint_freq,
                                hparams=sweep.hparams,
                                hparams_seed=hparams_seed,
                                trial_seed=trial_seed,
                                seed=seed_hash(
                                    dataset, algorithm, [test_env], hparams_seed, trial_seed
                                ),
                                holdout_fraction=sweep.holdout_fraction,
                                gradient_method=sweep.gradient_method,
                                max_eval_examples=sweep.max_eval_examples,
                                layout=sweep.layout,
                            )
                        )
    return configs


def run_sweep(sweep: SweepConfig, *, log: Callable[[str], None] | None = None) -> list[Path]:
    """Runs (or finishes) every run of the sweep, with a progress bar and an ETA.

    Every run's arguments and output directory are checked before the first one starts.

    Returns:
        The run directories.

    Raises:
        ConfigError: bad arguments, or a run directory holding a different run.
    """
    from tqdm import tqdm

    configs = [config.resolved() for config in make_configs(sweep)]
    if configs:
        start_distributed(configs[0])  # every run has the sweep's layout
    writer = parallel.is_writer()
    for config in configs:
        check_output_dir(config)
    if writer:
        Path(sweep.output_dir).mkdir(parents=True, exist_ok=True)
    total = sum(config.steps or 0 for config in configs)
    with tqdm(
        total=total, unit="step", desc="sweep", dynamic_ncols=True, disable=not writer
    ) as bar:

        def write(line: str) -> None:
            if not writer:
                return
            tqdm.write(line)
            if log is not None:
                log(line)

        for index, config in enumerate(configs):
            name = Path(config.output_dir).name
            bar.set_description(f"run {index + 1}/{len(configs)}")
            write(f"[{index + 1}/{len(configs)}] {name}")
            run(config, on_step=lambda _: bar.update(), log=lambda line: write(f"  {line}"))
    return [Path(config.output_dir) for config in configs]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m experiments.sweep``."""
    parser = ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run every test env x algorithm x hparams draw x trial (DomainBed-style).",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--datasets", nargs="+", default=["RotatedMNIST"])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--test_envs", type=int, nargs="+", default=None, help="default: all")
    parser.add_argument("--n_hparams", type=int, default=1, help="hparams seeds 0..n-1")
    parser.add_argument("--n_trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--checkpoint_freq", type=int, default=None)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--hparams", type=json_object, default=None, help="JSON, every run")
    parser.add_argument("--gradient_method", default="loop", help=", ".join(GRADIENT_METHODS))
    parser.add_argument("--max_eval_examples", type=int, default=None)
    add_device_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.sweep``: returns the exit code (2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sweep = SweepConfig(
        output_dir=args.output_dir,
        datasets=tuple(args.datasets),
        algorithms=tuple(args.algorithms),
        test_envs=None if args.test_envs is None else tuple(args.test_envs),
        n_hparams=args.n_hparams,
        n_trials=args.n_trials,
        steps=args.steps,
        checkpoint_freq=args.checkpoint_freq,
        data_dir=args.data_dir,
        holdout_fraction=args.holdout_fraction,
        hparams=args.hparams,
        gradient_method=args.gradient_method,
        max_eval_examples=args.max_eval_examples,
        layout=layout_from_args(args),
    )
    try:
        run_dirs = run_sweep(sweep)
    except ConfigError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{len(run_dirs)} runs in {sweep.output_dir}; the table: "
        f"python -m experiments.collect_results {sweep.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
