"""A sweep's results tables: ``python -m experiments.collect_results DIR [DIR ...]``.

DomainBed's ``collect_results.py`` on this trainer's runs and on DomainBed's own: for
each model-selection method (training-domain validation, leave-one-domain-out
cross-validation, test-domain validation (oracle)), one table per dataset and the
averages over datasets, cells ``mean ± error`` over trial seeds with DomainBed's error
bar; in markdown (default), LaTeX (``--latex``) or JSON (``--format json``). The work is
done by :mod:`experiments.results` (no JAX: the command starts in a fraction of a second).

Flags::

    --selection training_domain leave_one_out oracle   the methods (default: all three)
    --format markdown|latex|json                       (--latex: as DomainBed's flag)
    --error_bar standard_error|std|sample_std          DomainBed's standard error by
                                                       default; std: ddof 0; sample_std:
                                                       ddof 1
    --output FILE                                      also write the document to FILE

Bad input (a directory that does not exist, no records, a malformed record) gets one
error line and exit code 2.

Python API: :func:`results_tables` (every method's tables of a directory), and, for the
callers of the single training-domain-validation table, :func:`load_runs`,
:func:`select_hparams` and :func:`results_table`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from etils import epath

from experiments import results
from experiments import run_dir as outputs
from experiments.cli import ArgumentParser, ConfigError, run_command
from experiments.results import tables
from experiments.results.summary import environment_names


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run's checkpoint chosen by training-domain validation.

    Attributes:
        dataset, algorithm, test_envs, hparams_seed, trial_seed: the run's arguments.
        step: the chosen checkpoint's step (the first of equal validation accuracies).
        val_acc: mean ``out`` accuracy of the training domains at that step.
        test_acc: mean ``in`` accuracy of the test domains at that step.
        finished: whether the run wrote its ``done`` marker.
        environments: the dataset's environment names.
        records: every record of the run (what :func:`results_table` selects from).
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
    records: tuple[results.Record, ...] = dataclasses.field(default=(), compare=False, repr=False)


def _run_result(run: results.Run) -> RunResult:
    def accuracies(record: results.Record) -> tuple[float, float]:
        training = [e for e in range(record.num_environments) if e not in record.test_envs]
        validation = float(np.mean([record.out_accuracy[e] for e in training]))
        test = float(np.mean([record.in_accuracy[e] for e in record.test_envs]))
        return validation, test

    scored = [(record, *accuracies(record)) for record in run.records]
    record, validation, test = max(scored, key=lambda item: item[1])
    return RunResult(
        dataset=record.dataset,
        algorithm=record.algorithm,
        test_envs=record.test_envs,
        hparams_seed=record.hparams_seed,
        trial_seed=record.trial_seed,
        step=record.step,
        val_acc=validation,
        test_acc=test,
        finished=run.finished,
        environments=environment_names(record.dataset, run.records),
        records=run.records,
    )


def load_runs(root: epath.PathLike) -> list[RunResult]:
    """Every run under ``root`` (any depth; a local directory or ``gs://...``) with at
    least one record, selected."""
    return [_run_result(run) for run in results.load_sweep([root]).runs]


def select_hparams(
    runs: Iterable[RunResult],
) -> dict[tuple[str, str, tuple[int, ...], int], float]:
    """``{(dataset, algorithm, test_envs, trial_seed): test_acc}`` of the best hparams.

    As DomainBed: the best validation accuracy wins; among equal ones, the highest
    ``hparams_seed``.
    """
    groups: dict[tuple[str, str, tuple[int, ...], int], list[RunResult]] = {}
    for run in runs:
        key = (run.dataset, run.algorithm, run.test_envs, run.trial_seed)
        groups.setdefault(key, []).append(run)
    chosen = {}
    for key, group in groups.items():
        by_seed = sorted(group, key=lambda run: run.hparams_seed)
        best = sorted(
            by_seed, key=lambda run: -math.inf if math.isnan(run.val_acc) else run.val_acc
        )[-1]
        chosen[key] = best.test_acc
    return chosen


def results_table(runs: Sequence[RunResult], display_names: Mapping[str, str] | None = None) -> str:
    """The training-domain validation tables (markdown, one per dataset) of ``runs``.

    DomainBed's numbers (runs with one test environment, its error bar, ``Avg`` the mean
    of the row), with a column per environment that some run tested.
    """
    if not runs:
        return "No results found.\n"
    sweep = results.Sweep(
        runs=tuple(
            results.Run(directory=epath.Path(), records=run.records, finished=run.finished)
            for run in runs
        )
    )
    (summary,) = results.summarize_sweep(
        sweep, ["training_domain"], columns="tested", display_names=display_names
    )
    error_bar = results.ERROR_BARS["standard_error"]
    lines = []
    for table in summary.datasets:
        lines += [tables.markdown_table(table, display_names), ""]
    lines += [
        "Model selection: training-domain validation set. " + tables.caption(error_bar),
        tables.runs_line(sweep),
        "",
    ]
    return "\n".join(lines)


def results_tables(
    directory: epath.PathLike,
    output_format: str = "markdown",
    display_names: Mapping[str, str] | None = None,
) -> str:
    """Every selection method's tables of the runs below ``directory``, as the command.

    Raises:
      experiments.results.RecordError: no records, or a malformed one.
    """
    return results.report([directory], output_format=output_format, display_names=display_names)


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.collect_results DIR [DIR ...]``: prints the tables.

    Returns:
      0, or 2 on bad input (one error line on stderr).
    """
    parser = ArgumentParser(
        prog="python -m experiments.collect_results",
        description="DomainBed's results tables of a sweep: three model-selection methods.",
    )
    parser.add_argument(
        "input_dirs", nargs="+", metavar="DIR", help="sweep directories (searched recursively)"
    )
    parser.add_argument(
        "--selection",
        nargs="+",
        choices=list(results.SELECTION_METHODS),
        default=list(results.SELECTION_METHODS),
        help="model-selection methods (default: all three, in DomainBed's order)",
    )
    parser.add_argument("--format", choices=results.FORMATS, default=None)
    parser.add_argument("--latex", action="store_true", help="the same as --format latex")
    parser.add_argument(
        "--error_bar",
        choices=list(results.ERROR_BARS),
        default="standard_error",
        help="standard_error: DomainBed's 100*std(acc/sqrt(n)) (default); "
        "std: the std over trials (ddof 0); sample_std: ddof 1",
    )
    parser.add_argument("--output", metavar="FILE", help="also write the document to FILE")
    return run_command(parser, _collect, argv)


def _collect(args: argparse.Namespace) -> int:
    if args.latex and args.format not in (None, "latex"):
        raise ConfigError(f"--latex contradicts --format {args.format}")
    output_format = "latex" if args.latex else args.format or "markdown"
    try:
        text = results.report(
            args.input_dirs,
            methods=list(dict.fromkeys(args.selection)),
            output_format=output_format,
            error_bar=args.error_bar,
        )
        if args.output:
            outputs.as_path(args.output).write_text(text, encoding="utf-8")
    except (results.RecordError, OSError) as error:
        raise ConfigError(str(error)) from None
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
