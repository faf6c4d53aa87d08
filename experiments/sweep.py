"""Every test-env combination x algorithm x hparams draw x trial: ``python -m experiments.sweep``.

DomainBed's ``sweep.py launch``, run in this process (one compilation of the train step
serves all runs of an algorithm). By default every dataset's runs hold out each
environment alone and each pair of environments, as DomainBed's
``all_test_env_combinations``: the runs with one test environment serve training-domain
validation and the oracle, those with two leave-one-domain-out validation
(:mod:`experiments.collect_results`). ``--single_test_envs`` runs the first kind only.
Pairs that would leave fewer than 2 training domains are skipped (gradient surgery needs
two). Each run has its own directory under ``--output_dir``; a sweep started again
skips the finished runs and resumes the interrupted one.

Example::

    python -m experiments.sweep --datasets RotatedMNIST --algorithms erm corgrad \\
        --n_trials 3 --steps 5000 --output_dir runs/sweep

Every flag of ``python -m experiments.train`` that is not per run (``--steps``,
``--hparams``, the device flags, ...) applies to every run and means the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from etils import epath

from experiments.algorithms import ALGORITHMS
from experiments.cli import (
    ArgumentParser,
    ConfigError,
    add_dataclass_arguments,
    dataclass_from_args,
    deprecated,
    run_command,
)
from experiments.run_dir import as_path, check_output_dir
from experiments.seeding import seed_hash
from experiments.training import Hooks, TrainConfig, processes, run
from experiments.training.loop import start_distributed

PER_RUN_FIELDS = ("dataset", "algorithm", "test_envs", "output_dir", "hparams_seed",
                  "trial_seed", "seed")
"""Fields of :class:`TrainConfig` the sweep sets for each run."""


def _field(default: Any, help_text: str, **metadata: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs.

    Attributes:
        output_dir: root of the run directories.
        datasets: dataset names (or paths).
        algorithms: algorithm names.
        test_env_choices: the environments the sweep holds out, alone or in pairs (None:
            all of each dataset's).
        single_test_envs: hold out one environment at a time only (DomainBed's flag);
            otherwise also every pair.
        n_hparams: hparams draws per setting: seeds 0 (the defaults) to n_hparams - 1.
        n_trials: trials per setting: trial seeds 0 to n_trials - 1.
        run: every run's other arguments (its per-run fields are the sweep's to set).
    """

    output_dir: str = dataclasses.field(metadata={"help": "root of the run directories"})
    datasets: tuple[str, ...] = _field(("RotatedMNIST",), "dataset names or folders")
    algorithms: tuple[str, ...] = _field(tuple(ALGORITHMS), "algorithm names")
    test_env_choices: tuple[int, ...] | None = _field(
        None, "environments held out, alone or in pairs (default: all)")
    single_test_envs: bool = _field(False, "one test environment at a time only")
    n_hparams: int = _field(1, "hparams seeds 0..n-1")
    n_trials: int = _field(3, "trial seeds 0..n-1")
    run: TrainConfig = _field(TrainConfig(), "every run", exclude=PER_RUN_FIELDS)


def all_test_env_combinations(
    num_environments: int, choices: Sequence[int] | None = None, *, single: bool = False
) -> Iterator[tuple[int, ...]]:
    """DomainBed's ``all_test_env_combinations``: each environment alone, then with each
    later one, in that order; pairs that leave fewer than 2 training domains are left out.

    Example:
      >>> list(all_test_env_combinations(4))
      [(0,), (0, 1), (0, 2), (0, 3), (1,), (1, 2), (1, 3), (2,), (2, 3), (3,)]
      >>> list(all_test_env_combinations(3))  # a pair would leave one training domain
      [(0,), (1,), (2,)]
    """
    envs = list(range(num_environments)) if choices is None else list(choices)
    for index, env in enumerate(envs):
        yield (env,)
        if not single and num_environments - 2 >= 2:
            for other in envs[index + 1:]:
                yield (env, other)


def _run_name(
    dataset: str, algorithm: str, test_envs: Sequence[int], hparams_seed: int, trial_seed: int
) -> str:
    envs = "_".join(str(env) for env in test_envs)
    return f"{Path(dataset).name}-{algorithm}-env{envs}-hp{hparams_seed}-trial{trial_seed}"


def make_configs(sweep: SweepConfig) -> list[TrainConfig]:
    """The runs of a sweep, in the order they run: trials outermost, so that an early
    stop leaves complete comparisons. Seeds follow DomainBed's ``make_args_list``.

    Raises:
        ConfigError: an unknown dataset or algorithm, or a test env out of range.
    """
    if sweep.n_trials < 1 or sweep.n_hparams < 1:
        raise ConfigError("n_trials and n_hparams must be at least 1")
    for algorithm in sweep.algorithms:
        dataclasses.replace(sweep.run, algorithm=algorithm).algorithm_entry()
    configs = []
    for trial_seed, hparams_seed in itertools.product(range(sweep.n_trials),
                                                      range(sweep.n_hparams)):
        for dataset in sweep.datasets:
            spec = dataclasses.replace(sweep.run, dataset=dataset).dataset_spec()
            combinations = all_test_env_combinations(
                len(spec.environments), sweep.test_env_choices, single=sweep.single_test_envs)
            for test_envs in combinations:
                for algorithm in sweep.algorithms:
                    name = _run_name(dataset, algorithm, test_envs, hparams_seed, trial_seed)
                    configs.append(dataclasses.replace(
                        sweep.run,
                        dataset=dataset,
                        algorithm=algorithm,
                        test_envs=test_envs,
                        output_dir=str(as_path(sweep.output_dir) / name),
                        hparams_seed=hparams_seed,
                        trial_seed=trial_seed,
                        seed=seed_hash(dataset, algorithm, list(test_envs), hparams_seed,
                                       trial_seed),
                    ))
    return configs


def run_sweep(
    sweep: SweepConfig, *, log: Callable[[str], None] | None = None
) -> list[epath.Path]:
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
    writer = processes.is_writer()
    for config in configs:
        check_output_dir(config.output_dir, config.run_args())
    if writer:
        as_path(sweep.output_dir).mkdir(parents=True, exist_ok=True)
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
            name = as_path(config.output_dir).name
            bar.set_description(f"run {index + 1}/{len(configs)}")
            write(f"[{index + 1}/{len(configs)}] {name}")
            run(config, hooks=Hooks(after_step=lambda *_: bar.update()),
                log=lambda line: write(f"  {line}"))
    return [as_path(config.output_dir) for config in configs]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m experiments.sweep``: :class:`SweepConfig`'s fields, with
    :class:`TrainConfig`'s that are not per run."""
    parser = ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run every test-env combination x algorithm x hparams draw x trial "
        "(DomainBed-style).",
    )
    add_dataclass_arguments(parser, SweepConfig)
    parser.add_argument(
        "--test_envs", type=int, nargs="+", default=None, dest="legacy_test_envs",
        action=deprecated("--test_envs", "--test_env_choices ... --single_test_envs"),
        help="deprecated: each of these held out alone",
    )
    return parser


def sweep_from_args(args: argparse.Namespace) -> SweepConfig:
    """The :class:`SweepConfig` of parsed flags (the deprecated ``--test_envs E...`` is
    ``--test_env_choices E... --single_test_envs``)."""
    sweep = dataclass_from_args(SweepConfig, args)
    if args.legacy_test_envs is not None:
        sweep = dataclasses.replace(
            sweep, test_env_choices=tuple(args.legacy_test_envs), single_test_envs=True)
    return sweep


def _sweep(args: argparse.Namespace) -> int:
    sweep = sweep_from_args(args)
    run_dirs = run_sweep(sweep)
    print(
        f"{len(run_dirs)} runs in {sweep.output_dir}; the table: "
        f"python -m experiments.collect_results {sweep.output_dir}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.sweep``: returns the exit code (2 on bad input)."""
    return run_command(build_parser(), _sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
