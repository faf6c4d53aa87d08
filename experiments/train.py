"""One training run: ``python -m experiments.train`` (DomainBed's ``train.py``).

Example::

    python -m experiments.train --dataset RotatedMNIST --algorithm corgrad \\
        --test_envs 0 --steps 500 --output_dir runs/rmnist_corgrad

The flags are the fields of :class:`~experiments.training.TrainConfig`; the run is
:func:`experiments.training.run` (evaluations, records and checkpoints every
``checkpoint_freq`` steps; a killed run started again resumes). Bad input exits with
code 2 and one line. With ``--dry_run`` the command prints the sharding plan for
``--num_devices`` devices and trains nothing (:mod:`experiments.dry_run`).

Python API: ``run(TrainConfig(...))`` returns the records.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from experiments.cli import (
    ArgumentParser,
    add_dataclass_arguments,
    dataclass_from_args,
    run_command,
)
from experiments.run_dir import CHECKPOINTS, RESULTS, as_path
from experiments.training import Hooks, TrainConfig, processes, run
from experiments.training.loop import start_distributed

__all__ = ["TrainConfig", "build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m experiments.train``: :class:`TrainConfig`'s fields and
    ``--dry_run``."""
    parser = ArgumentParser(
        prog="python -m experiments.train",
        description="Train one domain-generalization run (DomainBed-style).",
    )
    add_dataclass_arguments(parser, TrainConfig)
    parser.add_argument(
        "--dry_run",
        nargs="?",
        const="plan",
        choices=("plan", "compile"),
        help="print the sharding plan and exit; 'compile' adds XLA's memory analysis",
    )
    return parser


def _train(config: TrainConfig, argv: list[str], dry_run: str | None) -> int:
    if dry_run is not None:
        from experiments.dry_run import dry_run as plan

        return plan(config, argv, compile_step=dry_run == "compile")
    from tqdm import tqdm

    resolved = config.resolved()
    start_distributed(resolved)
    bars: list[tqdm] = []  # made at the first step: an error before it prints alone

    def after_step(step: int, metrics: Mapping | None) -> None:
        del step, metrics
        if not bars:
            bars.append(tqdm(total=resolved.steps, desc=resolved.algorithm, unit="step",
                             delay=1, disable=not processes.is_writer()))
        bars[0].update()

    try:
        run(config, hooks=Hooks(after_step=after_step), log=tqdm.write)
    finally:
        for bar in bars:
            bar.close()
    if processes.is_writer():
        print(f"results: {as_path(config.output_dir) / RESULTS}")
        print(f"checkpoints: {as_path(config.output_dir) / CHECKPOINTS}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.train``: returns the exit code (2 on bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_command(
        build_parser(),
        lambda args: _train(dataclass_from_args(TrainConfig, args), argv, args.dry_run),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
