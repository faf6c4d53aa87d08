"""The numbers of DomainBed's tables: per dataset, and the averages over datasets.

For one selection method (:mod:`experiments.results.selection`), as DomainBed's
``print_results_tables`` computes them, in percent:

* dataset table, cell (algorithm, test env): the mean over trial seeds of the selected
  models' test accuracies, with an error bar (:data:`ERROR_BARS`); ``Avg``: the mean of
  the row's cell means, without error bar, missing (X) if any cell is;
* averages table, cell (algorithm, dataset): per trial seed, the mean of its selected
  test accuracies over the test environments it has (all of them or not), then the mean
  and error bar over trial seeds; ``Avg``: the mean of the row's means, missing if any
  cell is.

Rows are every algorithm of the records and columns every environment of the dataset
(DomainBed's), or only those a run with one test environment tested
(``columns="tested"``).

Example:
    >>> cell = make_cell([0.5, 0.7], STANDARD_ERROR)
    >>> round(cell.mean, 6), round(cell.error, 6), cell.trials
    (60.0, 7.071068, 2)
    >>> round(make_cell([0.5, 0.7], SAMPLE_STD).error, 6)
    14.142136
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

from experiments.results.catalog import DOMAINBED_ENVIRONMENTS, algorithm_order, dataset_order
from experiments.results.names import default_display_names
from experiments.results.records import Record
from experiments.results.selection import Selection, SelectionMethod, select


@dataclasses.dataclass(frozen=True)
class ErrorBar:
    """How the ``±`` of a cell is computed from the per-trial accuracies (fractions).

    Attributes:
      key: its name on the command line.
      description: what it is, for a table's caption.
      compute: accuracies -> error in percent (None where undefined).
    """

    key: str
    description: str
    compute: Callable[[Sequence[float]], float | None]


def _standard_error(values: Sequence[float]) -> float:
    return float(100 * np.std(list(values) / np.sqrt(len(values))))


def _std(values: Sequence[float]) -> float:
    return float(100 * np.std(list(values)))


def _sample_std(values: Sequence[float]) -> float | None:
    return float(100 * np.std(list(values), ddof=1)) if len(values) > 1 else None


STANDARD_ERROR = ErrorBar(
    "standard_error",
    "the standard error over trial seeds as DomainBed computes it, "
    "100 * std(acc / sqrt(n)) with ddof 0 over n trial seeds",
    _standard_error,
)
STD = ErrorBar("std", "the standard deviation over trial seeds (ddof 0)", _std)
SAMPLE_STD = ErrorBar(
    "sample_std",
    "the sample standard deviation over trial seeds (ddof 1; none for a single trial)",
    _sample_std,
)
ERROR_BARS: dict[str, ErrorBar] = {bar.key: bar for bar in (STANDARD_ERROR, STD, SAMPLE_STD)}
"""The error bars by key; DomainBed prints :data:`STANDARD_ERROR`."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a table, in percent.

    Attributes:
      mean: the mean, or None for a missing cell (X).
      error: the error bar; None for ``Avg`` cells, missing cells and an undefined one.
      trials: how many trial seeds the mean is over; None for ``Avg`` cells.
    """

    mean: float | None
    error: float | None
    trials: int | None


MISSING = Cell(None, None, 0)


def make_cell(values: Sequence[float], error_bar: ErrorBar) -> Cell:
    """The cell of per-trial accuracies (fractions): DomainBed's ``format_mean``."""
    if len(values) == 0:
        return MISSING
    return Cell(float(100 * np.mean(list(values))), error_bar.compute(values), len(values))


def average_cell(cells: Sequence[Cell]) -> Cell:
    """``Avg``: the mean of the cells' means (DomainBed's ``sum(means) / len(means)``)."""
    means = [cell.mean for cell in cells]
    if not means or any(mean is None for mean in means):
        return Cell(None, None, None)
    return Cell(sum(means) / len(means), None, None)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Table:
    """One table: rows are algorithms, the last column is ``Avg``.

    Attributes:
      title: the dataset, or ``"Averages"``.
      columns: the column labels (environments or datasets), then ``"Avg"``.
      algorithms: the rows' algorithms, as the records name them.
      cells: ``cells[row][column]``.
    """

    title: str
    columns: tuple[str, ...]
    algorithms: tuple[str, ...]
    cells: tuple[tuple[Cell, ...], ...]


@dataclasses.dataclass(frozen=True)
class MethodSummary:
    """Every table of one selection method.

    Attributes:
      method: the selection method.
      error_bar: the error bar of the cells.
      datasets: one table per dataset, in table order.
      averages: the averages over datasets.
    """

    method: SelectionMethod
    error_bar: ErrorBar
    datasets: tuple[Table, ...]
    averages: Table


def environment_names(dataset: str, records: Sequence[Record]) -> tuple[str, ...]:
    """A dataset's environments: from its records, else DomainBed's, else numbers."""
    for record in records:
        if record.dataset == dataset and record.environments is not None:
            return record.environments
    if dataset in DOMAINBED_ENVIRONMENTS:
        return DOMAINBED_ENVIRONMENTS[dataset]
    count = max(record.num_environments for record in records if record.dataset == dataset)
    return tuple(str(env) for env in range(count))


def _dataset_table(
    dataset: str,
    algorithms: Sequence[str],
    accuracies: Mapping[tuple[str, str, int], list[float]],
    environments: tuple[str, ...],
    test_envs: Sequence[int],
    error_bar: ErrorBar,
) -> Table:
    rows = []
    for algorithm in algorithms:
        cells = [
            make_cell(accuracies.get((dataset, algorithm, env), []), error_bar) for env in test_envs
        ]
        rows.append((*cells, average_cell(cells)))
    columns = tuple(environments[env] if env < len(environments) else str(env) for env in test_envs)
    return Table(dataset, (*columns, "Avg"), tuple(algorithms), tuple(rows))


def _averages_table(
    datasets: Sequence[str],
    algorithms: Sequence[str],
    selections: Sequence[Selection],
    error_bar: ErrorBar,
) -> Table:
    by_trial: dict[tuple[str, str], dict[int, list[float]]] = {}
    for s in selections:
        trials = by_trial.setdefault((s.algorithm, s.dataset), {})
        trials.setdefault(s.trial_seed, []).append(s.test_accuracy)
    rows = []
    for algorithm in algorithms:
        cells = []
        for dataset in datasets:
            trials = by_trial.get((algorithm, dataset), {})
            trial_means = [float(np.mean(trials[trial])) for trial in sorted(trials)]
            cells.append(make_cell(trial_means, error_bar))
        rows.append((*cells, average_cell(cells)))
    return Table("Averages", (*datasets, "Avg"), tuple(algorithms), tuple(rows))


def summarize(
    records: Sequence[Record],
    method: SelectionMethod,
    *,
    error_bar: ErrorBar = STANDARD_ERROR,
    columns: Literal["all", "tested"] = "all",
    known_algorithms: Mapping[str, str] | Sequence[str] | None = None,
) -> MethodSummary:
    """The tables of one selection method.

    Args:
      records: a sweep's records, in reading order.
      method: the selection method.
      error_bar: the ``±`` of the cells (DomainBed's standard error by default).
      columns: ``"all"``: every environment of a dataset (DomainBed); ``"tested"``: the
        environments a run with one test environment tested.
      known_algorithms: names that order the rows after DomainBed's (this trainer's
        algorithms; None: :func:`~experiments.results.names.default_display_names`).

    Returns:
      The per-dataset tables and the averages table.
    """
    known = default_display_names() if known_algorithms is None else known_algorithms
    selections = select(records, method)
    accuracies: dict[tuple[str, str, int], list[float]] = {}
    for s in selections:  # in group order, as DomainBed averages them
        accuracies.setdefault((s.dataset, s.algorithm, s.test_env), []).append(s.test_accuracy)
    algorithms = algorithm_order((r.algorithm for r in records), known=list(known))
    datasets = dataset_order(r.dataset for r in records)
    tables = []
    for dataset in datasets:
        environments = environment_names(dataset, records)
        if columns == "all":
            test_envs: Sequence[int] = range(len(environments))
        else:
            test_envs = sorted(
                {r.test_envs[0] for r in records if r.dataset == dataset and len(r.test_envs) == 1}
            )
        tables.append(
            _dataset_table(dataset, algorithms, accuracies, environments, test_envs, error_bar)
        )
    averages = _averages_table(datasets, algorithms, selections, error_bar)
    return MethodSummary(
        method=method, error_bar=error_bar, datasets=tuple(tables), averages=averages
    )
