"""A sweep's results, as DomainBed's ``collect_results.py`` reports them, in one call.

Example:
    >>> import json, pathlib, tempfile
    >>> sweep_dir = pathlib.Path(tempfile.mkdtemp())
    >>> for trial, acc in enumerate([0.75, 0.85]):
    ...     run_dir = sweep_dir / f"run{trial}"
    ...     run_dir.mkdir()
    ...     line = {"step": 0, "env0_in_acc": acc, "env0_out_acc": 0.7,
    ...             "env1_in_acc": 0.9, "env1_out_acc": 0.8,
    ...             "args": {"dataset": "Toy", "algorithm": "ERM", "test_envs": [0],
    ...                      "hparams_seed": 0, "trial_seed": trial}}
    ...     _ = (run_dir / "results.jsonl").write_text(json.dumps(line) + "\\n")
    >>> text = report([sweep_dir], methods=["training_domain"])
    >>> print(text.splitlines()[0])
    Total records: 2
    >>> print("\\n".join(text.splitlines()[-5:]))  # the averages over datasets
    ### Averages
    <BLANKLINE>
    | Algorithm | Toy | Avg |
    |---|---|---|
    | ERM | 80.0 ± 3.5 | 80.0 |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from experiments.results.export import json_document
from experiments.results.names import default_display_names
from experiments.results.records import RESULTS_FILE, RecordError, Sweep, load_sweep
from experiments.results.selection import SELECTION_METHODS
from experiments.results.summary import ERROR_BARS, MethodSummary, summarize
from experiments.results.tables import latex_document, markdown_document

FORMATS = ("markdown", "latex", "json")
"""The output formats of :func:`report`."""


def summarize_sweep(
    sweep: Sweep,
    methods: Sequence[str] = tuple(SELECTION_METHODS),
    *,
    error_bar: str = "standard_error",
    columns: Literal["all", "tested"] = "all",
    display_names: Mapping[str, str] | None = None,
) -> list[MethodSummary]:
    """The tables of each selection method (keys of :data:`SELECTION_METHODS`)."""
    names = default_display_names() if display_names is None else display_names
    return [
        summarize(
            sweep.records,
            SELECTION_METHODS[method],
            error_bar=ERROR_BARS[error_bar],
            columns=columns,
            known_algorithms=names,
        )
        for method in methods
    ]


def render(
    sweep: Sweep,
    summaries: Sequence[MethodSummary],
    output_format: str = "markdown",
    display_names: Mapping[str, str] | None = None,
) -> str:
    """The document of ``summaries`` in ``output_format`` (one of :data:`FORMATS`)."""
    write = {"markdown": markdown_document, "latex": latex_document, "json": json_document}
    return write[output_format](sweep, summaries, display_names)


def report(
    directories: Iterable[str | Path],
    *,
    methods: Sequence[str] = tuple(SELECTION_METHODS),
    output_format: str = "markdown",
    error_bar: str = "standard_error",
    display_names: Mapping[str, str] | None = None,
) -> str:
    """The results of every run below ``directories``, in DomainBed's tables.

    Args:
      directories: sweep directories (searched at any depth for ``results.jsonl``).
      methods: selection methods, keys of :data:`SELECTION_METHODS`
        (``training_domain``, ``leave_one_out``, ``oracle``); all by default.
      output_format: ``"markdown"``, ``"latex"`` or ``"json"``.
      error_bar: a key of :data:`~experiments.results.summary.ERROR_BARS`; DomainBed's
        ``"standard_error"`` by default.
      display_names: ``{algorithm: name}`` for the rows; None: this trainer's names.

    Returns:
      The document, ending in a newline.

    Raises:
      RecordError: a directory does not exist or holds no records, a record is malformed.
      KeyError: an unknown method, format or error bar.
    """
    directories = [Path(directory) for directory in directories]
    sweep = load_sweep(directories)
    if not sweep.records:
        where = ", ".join(str(directory) for directory in directories)
        raise RecordError(f"no records ({RESULTS_FILE}) found under {where}")
    summaries = summarize_sweep(sweep, methods, error_bar=error_bar, display_names=display_names)
    return render(sweep, summaries, output_format, display_names)
