"""DomainBed's tables, in markdown and in LaTeX.

A document has, as DomainBed's ``collect_results.py`` prints it, ``Total records: N``
and then, for each selection method, one table per dataset and the ``Averages`` table.
Cells read ``mean ± error`` (LaTeX: ``mean $\\pm$ error``) in percent with one decimal;
``Avg`` cells have no error bar; a missing cell is ``X``. Each method's section opens
with a caption that says which error bar is printed.

Example:
    >>> from experiments.results.summary import Cell, Table
    >>> table = Table("Toy", ("A", "B", "Avg"), ("erm",),
    ...               ((Cell(61.25, 0.5, 2), Cell(None, None, 0), Cell(None, None, None)),))
    >>> print(markdown_table(table, {"erm": "ERM"}))
    ### Toy
    <BLANKLINE>
    | Algorithm | A | B | Avg |
    |---|---|---|---|
    | ERM | 61.2 ± 0.5 | X | X |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from experiments.results.names import display_name
from experiments.results.records import Sweep
from experiments.results.summary import Cell, ErrorBar, MethodSummary, Table

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def format_cell(cell: Cell, plus_minus: str = "±") -> str:
    """``"mean ± error"`` with one decimal; ``Avg`` (no error bar): ``"mean"``; ``"X"``."""
    if cell.mean is None:
        return "X"
    if cell.error is None:
        return f"{cell.mean:.1f}"
    return f"{cell.mean:.1f} {plus_minus} {cell.error:.1f}"


def caption(error_bar: ErrorBar) -> str:
    """What the cells of a method's tables are (plain text)."""
    return (
        f"Test-domain accuracy (%) of the selected models: mean ± {error_bar.description}. "
        "Avg: the mean of the row's means. Averages: for each trial seed, the mean over "
        "the test environments it has; then mean ± the same error bar over trial seeds. "
        "X: no result."
    )


def records_line(sweep: Sweep) -> str:
    """``Total records: N`` (DomainBed's first line)."""
    return f"Total records: {len(sweep.records)}"


def runs_line(sweep: Sweep) -> str:
    """How many runs, and how many lack ``done`` (their records count all the same)."""
    unfinished = sum(not run.finished for run in sweep.runs)
    if not unfinished:
        return f"Runs: {len(sweep.runs)}, all finished."
    return (
        f"Runs: {len(sweep.runs)}, {unfinished} unfinished (no done file; their records "
        "so far count, as in DomainBed)."
    )


def row_labels(algorithms: Sequence[str], names: Mapping[str, str] | None = None) -> list[str]:
    """The rows' labels: display names, with the record's name added where two coincide.

    Example:
        >>> row_labels(["ERM", "erm", "corgrad"], {"erm": "ERM", "corgrad": "CorGrad"})
        ['ERM', 'ERM (erm)', 'CorGrad']
    """
    labels = [display_name(algorithm, names) for algorithm in algorithms]
    return [
        f"{label} ({algorithm})" if labels.count(label) > 1 and label != algorithm else label
        for algorithm, label in zip(algorithms, labels, strict=True)
    ]


def _markdown_label(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: Table, names: Mapping[str, str] | None = None) -> str:
    """One table in markdown, under a ``###`` heading.

    Args:
      table: the table.
      names: display names (:func:`~experiments.results.names.display_name`).
    """
    columns = ["Algorithm", *table.columns]
    lines = [
        f"### {table.title}",
        "",
        "| " + " | ".join(map(_markdown_label, columns)) + " |",
        "|---" * len(columns) + "|",
    ]
    labels = row_labels(table.algorithms, names)
    for label, row in zip(labels, table.cells, strict=True):
        cells = [_markdown_label(label), *map(format_cell, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_document(
    sweep: Sweep, summaries: Sequence[MethodSummary], names: Mapping[str, str] | None = None
) -> str:
    """Every method's tables in markdown, after ``Total records: N``."""
    lines = [records_line(sweep), runs_line(sweep)]
    for summary in summaries:
        lines += ["", f"## Model selection: {summary.method.name}", ""]
        lines.append(caption(summary.error_bar))
        for table in (*summary.datasets, summary.averages):
            lines += ["", markdown_table(table, names)]
    return "\n".join(lines) + "\n"


def latex_table(table: Table, names: Mapping[str, str] | None = None) -> str:
    """One table in LaTeX (booktabs, scaled to the text width), as DomainBed's."""
    header = ["Algorithm", *table.columns]
    lines = [
        r"\begin{center}",
        r"\adjustbox{max width=\textwidth}{%",
        r"\begin{tabular}{l" + "c" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(r"\textbf{" + latex_escape(label) + "}" for label in header) + r" \\",
        r"\midrule",
    ]
    labels = row_labels(table.algorithms, names)
    for label, row in zip(labels, table.cells, strict=True):
        cells = [latex_escape(label)]
        cells += [format_cell(cell, r"$\pm$") for cell in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{center}"]
    return "\n".join(lines)


def latex_document(
    sweep: Sweep, summaries: Sequence[MethodSummary], names: Mapping[str, str] | None = None
) -> str:
    """Every method's tables as a LaTeX document (``\\subsection`` per method)."""
    lines = [
        r"\documentclass{article}",
        r"\usepackage{booktabs}",
        r"\usepackage{adjustbox}",
        r"\begin{document}",
        r"\section{Results}",
        "% " + records_line(sweep),
        "% " + runs_line(sweep),
    ]
    for summary in summaries:
        lines += ["", r"\subsection{Model selection: " + latex_escape(summary.method.name) + "}"]
        text = latex_escape(caption(summary.error_bar)).replace("±", r"$\pm$")
        lines += ["", text]
        for table in (*summary.datasets, summary.averages):
            lines += ["", r"\subsubsection{" + latex_escape(table.title) + "}", ""]
            lines.append(latex_table(table, names))
    lines += ["", r"\end{document}"]
    return "\n".join(lines) + "\n"
