"""The tables as JSON: per method, dataset, algorithm and column, mean, error, trials.

Layout (numbers in percent, unrounded; ``null`` where a cell is missing, and for the
error and trial count of ``Avg`` cells)::

    {"total_records": 200, "runs": 40, "unfinished_runs": 0,
     "display_names": {"ERM": "ERM"},
     "methods": {
       "training_domain": {
         "name": "training-domain validation set",
         "error_bar": "standard_error", "error_bar_description": "...",
         "datasets": {"VLCS": {"ERM": {"C": {"mean": 98.0, "error": 0.2, "trials": 2},
                                       ...,
                                       "Avg": {"mean": 78.3, "error": null, "trials": null}}}},
         "averages": {"ERM": {"VLCS": {...}, "Avg": {...}}}},
       "leave_one_out": {...}, "oracle": {...}}}

that is ``methods[method]["datasets"][dataset][algorithm][column]`` (and
``methods[method]["averages"][algorithm][dataset]``), keys in table order; algorithms
as the records name them.

Example:
    >>> from experiments.results.summary import Cell
    >>> cell_json(Cell(61.25, 0.5, 2))
    {'mean': 61.25, 'error': 0.5, 'trials': 2}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.results.records import Sweep
from experiments.results.summary import Cell, MethodSummary, Table
from experiments.results.tables import row_labels


def cell_json(cell: Cell) -> dict[str, Any]:
    """``{"mean", "error", "trials"}`` of one cell."""
    return {"mean": cell.mean, "error": cell.error, "trials": cell.trials}


def table_json(table: Table) -> dict[str, dict[str, dict[str, Any]]]:
    """``{algorithm: {column: cell}}`` of one table."""
    return {
        algorithm: {
            column: cell_json(cell) for column, cell in zip(table.columns, row, strict=True)
        }
        for algorithm, row in zip(table.algorithms, table.cells, strict=True)
    }


def json_document(
    sweep: Sweep, summaries: Sequence[MethodSummary], names: Mapping[str, str] | None = None
) -> str:
    """Every method's tables as one JSON object (indented, ending in a newline)."""
    algorithms = summaries[0].averages.algorithms if summaries else ()
    document = {
        "total_records": len(sweep.records),
        "runs": len(sweep.runs),
        "unfinished_runs": sum(not run.finished for run in sweep.runs),
        "display_names": dict(zip(algorithms, row_labels(algorithms, names), strict=True)),
        "methods": {
            summary.method.key: {
                "name": summary.method.name,
                "error_bar": summary.error_bar.key,
                "error_bar_description": summary.error_bar.description,
                "datasets": {table.title: table_json(table) for table in summary.datasets},
                "averages": table_json(summary.averages),
            }
            for summary in summaries
        },
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
