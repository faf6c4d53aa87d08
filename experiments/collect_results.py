"""The results table of a sweep: ``python -m experiments.collect_results DIR``.

DomainBed's ``collect_results.py`` with its *training-domain validation*
(``IIDAccuracySelectionMethod``):

1. in each run, the checkpoint (record) with the best mean accuracy on the training
   domains' held-out ``out`` splits is chosen, and its accuracy on the test domain's
   ``in`` split is the run's result (DomainBed's ``_step_acc``);
2. among the runs that differ only in ``hparams_seed``, the one with the best
   validation accuracy is kept (the random search);
3. per algorithm and test environment, the table shows mean ± standard deviation over
   the trials (``trial_seed``); the ``Avg`` column averages each trial's results over
   the test environments first.

The table is markdown, one per dataset, one row per algorithm, in percent.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from etils import epath

from experiments import run_dir as outputs
from experiments.algorithms import ALGORITHMS, display_name
from experiments.cli import ArgumentParser

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run's selected checkpoint (training-domain validation).

    Attributes:
        dataset, algorithm, test_envs, hparams_seed, trial_seed: the run's arguments.
        step: the chosen checkpoint's step.
        val_acc: mean ``out`` accuracy of the training domains at that step.
        test_acc: mean ``in`` accuracy of the test domains at that step.
        finished: whether the run wrote its ``done`` marker.
        environments: the dataset's environment names.
    """

    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    hparams_seed: int
    trial_seed: int
    step: int
    val_acc: float
    test_acc: float
    finished: bool
    environments: tuple[str, ...]


def select_checkpoint(records: Sequence[Record]) -> tuple[Record, float, float]:
    """The record with the best training-domain validation accuracy (the first on ties).

    Returns:
        ``(record, val_acc, test_acc)``.
    """
    best: tuple[Record, float, float] | None = None
    for record in records:
        test_envs = record["args"]["test_envs"]
        num_envs = sum(1 for key in record if key.endswith("_out_acc"))
        val = float(
            np.mean([record[f"env{e}_out_acc"] for e in range(num_envs) if e not in test_envs])
        )
        test = float(np.mean([record[f"env{e}_in_acc"] for e in test_envs]))
        if best is None or val > best[1]:
            best = (record, val, test)
    if best is None:
        raise ValueError("a run without records has no checkpoint to select")
    return best


def load_runs(root: epath.PathLike) -> list[RunResult]:
    """Every run under ``root`` (any depth; a local directory or ``gs://...``) with at
    least one record, selected."""
    runs = []
    for path in (run / outputs.RESULTS for run in outputs.find_runs(root)):
        records = outputs.read_records(path)
        if not records:
            continue
        record, val, test = select_checkpoint(records)
        args = record["args"]
        num_envs = sum(1 for key in record if key.endswith("_out_acc"))
        environments = record.get("environments") or [str(e) for e in range(num_envs)]
        runs.append(
            RunResult(
                dataset=args["dataset"],
                algorithm=args["algorithm"],
                test_envs=tuple(args["test_envs"]),
                hparams_seed=int(args["hparams_seed"]),
                trial_seed=int(args["trial_seed"]),
                step=int(record["step"]),
                val_acc=val,
                test_acc=test,
                finished=(path.parent / outputs.DONE).exists(),
                environments=tuple(environments),
            )
        )
    return runs


def select_hparams(runs: Iterable[RunResult]) -> dict[tuple[str, str, tuple[int, ...], int], float]:
    """``{(dataset, algorithm, test_envs, trial_seed): test_acc}`` of the best hparams."""
    best: dict[tuple[str, str, tuple[int, ...], int], RunResult] = {}
    for run in runs:
        key = (run.dataset, run.algorithm, run.test_envs, run.trial_seed)
        if key not in best or run.val_acc > best[key].val_acc:
            best[key] = run
    return {key: run.test_acc for key, run in best.items()}


def _mean_std(values: Sequence[float]) -> str:
    values = 100 * np.asarray(values)
    return f"{values.mean():.1f} ± {values.std():.1f}"


def results_table(runs: Sequence[RunResult]) -> str:
    """The markdown tables (one per dataset) of selected runs."""
    if not runs:
        return "No results found.\n"
    accs = select_hparams(runs)
    lines = []
    for dataset in sorted({run.dataset for run in runs}):
        in_dataset = [run for run in runs if run.dataset == dataset]
        environments = in_dataset[0].environments
        test_envs = sorted({run.test_envs for run in in_dataset})
        algorithms = sorted(
            {run.algorithm for run in in_dataset},
            key=lambda a: (list(ALGORITHMS).index(a) if a in ALGORITHMS else len(ALGORITHMS), a),
        )
        trials = sorted({run.trial_seed for run in in_dataset})
        columns = [" + ".join(environments[e] for e in envs) for envs in test_envs]
        lines += [
            f"### {dataset}",
            "",
            "Model selection: training-domain validation. Test-domain accuracy (%), "
            f"mean ± std over trials ({len(trials)} trial seed(s)).",
            "",
            "| Algorithm | " + " | ".join(columns) + " | Avg |",
            "|---" * (len(columns) + 2) + "|",
        ]
        for algorithm in algorithms:
            cells = []
            per_trial: dict[int, list[float]] = defaultdict(list)
            for envs in test_envs:
                values = [
                    accs[(dataset, algorithm, envs, trial)]
                    for trial in trials
                    if (dataset, algorithm, envs, trial) in accs
                ]
                cells.append(_mean_std(values) if values else "X")
                for trial in trials:
                    if (dataset, algorithm, envs, trial) in accs:
                        per_trial[trial].append(accs[(dataset, algorithm, envs, trial)])
            complete = [np.mean(v) for v in per_trial.values() if len(v) == len(test_envs)]
            cells.append(_mean_std(complete) if complete else "X")
            name = display_name(algorithm)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        unfinished = sum(1 for run in in_dataset if not run.finished)
        lines.append("")
        lines.append(
            f"{len(in_dataset)} runs"
            + (
                f", {unfinished} of them unfinished (their last checkpoint counts)"
                if unfinished
                else ""
            )
            + ". X: no run."
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.collect_results DIR``: prints the table, returns 0."""
    parser = ArgumentParser(
        prog="python -m experiments.collect_results",
        description="The DomainBed-style results table of a sweep, in markdown.",
    )
    parser.add_argument("input_dir", help="a sweep's output_dir (searched recursively)")
    args = parser.parse_args(argv)
    if not outputs.as_path(args.input_dir).is_dir():
        print(f"{parser.prog}: error: {args.input_dir} is not a directory", file=sys.stderr)
        return 2
    print(results_table(load_runs(args.input_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
