"""The numbers and the rendering of DomainBed's tables, on hand-made records."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

from experiments.results import catalog, export, names, records, reporting, summary, tables
from experiments.results.records import Record, Run, Sweep
from experiments.results.selection import ORACLE
from experiments.results.summary import SAMPLE_STD, STANDARD_ERROR, STD, make_cell, summarize


def test_domainbeds_error_bar_is_the_std_of_acc_over_sqrt_n() -> None:
    # DomainBed's own unit test: format_mean([0.1, 0.2, 0.3]) == '20.0 +/- 4.7'.
    assert tables.format_cell(make_cell([0.1, 0.2, 0.3], STANDARD_ERROR)) == "20.0 ± 4.7"
    # ... which is the population std (8.16) over sqrt(3); the sample std is 10.0.
    assert tables.format_cell(make_cell([0.1, 0.2, 0.3], STD)) == "20.0 ± 8.2"
    assert tables.format_cell(make_cell([0.1, 0.2, 0.3], SAMPLE_STD)) == "20.0 ± 10.0"
    one = make_cell([0.981], SAMPLE_STD)  # undefined for one trial: the mean alone
    assert (one.error, one.trials, tables.format_cell(one)) == (None, 1, "98.1")
    assert make_cell([0.981], STANDARD_ERROR).error == 0.0
    assert tables.format_cell(make_cell([], STANDARD_ERROR)) == "X"
    values = np.random.default_rng(0).uniform(size=5)
    assert make_cell(values, STANDARD_ERROR).error == pytest.approx(
        100 * np.std(values, ddof=1) * np.sqrt(4 / 5) / np.sqrt(5), rel=1e-12
    )


def oracle_record(dataset: str, algorithm: str, env: int, trial: int, acc: float) -> Record:
    """A one-checkpoint run whose oracle result is ``acc`` (three environments)."""
    accs = tuple(acc if e == env else 0.0 for e in range(3))
    return Record(dataset, algorithm, (env,), 0, trial, 0, accs, accs)


# Toy (envs 0, 1, 2): ERM env 0 trials 60, 70; env 1 trial 0 only, 50; env 2: no run.
# IRM: envs 0, 1, 2 in trial 0: 30, 40, 50.
RECORDS = [
    oracle_record("Toy", "ERM", 0, 0, 0.6),
    oracle_record("Toy", "ERM", 0, 1, 0.7),
    oracle_record("Toy", "ERM", 1, 0, 0.5),
    oracle_record("Toy", "IRM", 0, 0, 0.3),
    oracle_record("Toy", "IRM", 1, 0, 0.4),
    oracle_record("Toy", "IRM", 2, 0, 0.5),
    oracle_record("ColoredMNIST", "IRM", 2, 0, 0.1),
]


def _cells(table: summary.Table) -> dict[tuple[str, str], str]:
    return {
        (algorithm, column): tables.format_cell(cell)
        for algorithm, row in zip(table.algorithms, table.cells, strict=True)
        for column, cell in zip(table.columns, row, strict=True)
    }


def test_avg_is_the_mean_of_the_row_and_missing_cells_are_x() -> None:
    result = summarize(RECORDS, ORACLE, known_algorithms={})
    cmnist, toy = result.datasets
    assert (cmnist.title, toy.title) == ("ColoredMNIST", "Toy")  # DomainBed's first
    assert cmnist.columns == ("+90%", "+80%", "-90%", "Avg")  # DomainBed's names
    assert toy.columns == ("0", "1", "2", "Avg")  # numbered: no names known
    assert toy.algorithms == ("ERM", "IRM")
    cells = _cells(toy)
    assert cells[("ERM", "0")] == "65.0 ± 3.5"  # std(0.6, 0.7) / sqrt(2) = 0.0354
    assert cells[("ERM", "1")] == "50.0 ± 0.0"
    assert (cells[("ERM", "2")], cells[("ERM", "Avg")]) == ("X", "X")
    assert cells[("IRM", "Avg")] == "40.0"  # the mean of 30, 40, 50, without error bar
    assert _cells(cmnist)[("ERM", "-90%")] == "X"  # every algorithm has a row
    erm = toy.cells[0]
    assert (erm[0].trials, erm[1].trials, erm[2].trials, erm[3].trials) == (2, 1, 0, None)


def test_the_averages_table_averages_each_trial_over_the_envs_it_has() -> None:
    averages = summarize(RECORDS, ORACLE, known_algorithms={}).averages
    assert averages.columns == ("ColoredMNIST", "Toy", "Avg")
    cells = _cells(averages)
    # ERM on Toy: trial 0 has envs 0 and 1: (0.6 + 0.5) / 2 = 0.55; trial 1 env 0: 0.7.
    # Mean 62.5; error std(0.55, 0.7) / sqrt(2) = 0.075 / 1.414 = 5.3.
    assert cells[("ERM", "Toy")] == "62.5 ± 5.3"
    assert cells[("ERM", "ColoredMNIST")] == "X" and cells[("ERM", "Avg")] == "X"
    assert cells[("IRM", "Toy")] == "40.0 ± 0.0"
    assert cells[("IRM", "Avg")] == "25.0"  # (10 + 40) / 2


def test_the_tested_columns_only() -> None:
    toy = summarize(RECORDS[:3], ORACLE, columns="tested", known_algorithms={}).datasets[0]
    assert toy.columns == ("0", "1", "Avg")
    assert _cells(toy)[("ERM", "Avg")] == "57.5"  # (65 + 50) / 2


def test_datasets_and_algorithms_come_in_domainbeds_order_then_ours() -> None:
    assert catalog.dataset_order(["PACS", "MyData", "VLCS", "ColoredMNIST", "PACS"]) == [
        "ColoredMNIST",
        "VLCS",
        "PACS",
        "MyData",
    ]
    appearance = ["corgrad", "SANDMask", "Mine", "ERM", "erm", "Other", "SANDMask"]
    known = {"erm": "ERM", "corgrad": "CorGrad", "pcgrad": "PCGrad"}
    order = catalog.algorithm_order(appearance, known=list(known))
    assert order == ["ERM", "SANDMask", "erm", "corgrad", "Mine", "Other"]
    labels = tables.row_labels(order, known)
    assert labels == ["ERM", "SANDMask", "ERM (erm)", "CorGrad", "Mine", "Other"]
    assert list(catalog.DOMAINBED_ENVIRONMENTS)[:6] == [
        "Debug28", "Debug224", "ColoredMNIST", "RotatedMNIST", "VLCS", "PACS",
    ]  # fmt: skip
    assert len(catalog.DOMAINBED_ALGORITHMS) == len(set(catalog.DOMAINBED_ALGORITHMS)) == 34


def test_unknown_algorithms_are_shown_as_they_are() -> None:
    assert names.display_name("SANDMask", {"erm": "ERM"}) == "SANDMask"
    assert names.display_name("erm", {"erm": "ERM"}) == "ERM"
    assert names.display_name("corgrad_layer") == "CorGrad (L)"  # the default names
    assert names.display_name("corgrad_layer", {}) == "corgrad_layer"


def _sweep(records_: list[Record], finished: bool = True) -> Sweep:
    return Sweep((Run(directory=Path("r"), records=tuple(records_), finished=finished),))


def test_markdown_document() -> None:
    sweep = _sweep(RECORDS, finished=False)
    summaries = reporting.summarize_sweep(sweep, ["oracle"], display_names={"IRM": "Irm"})
    text = tables.markdown_document(sweep, summaries, {"IRM": "Irm"})
    lines = text.splitlines()
    assert lines[0] == "Total records: 7"
    assert lines[1].startswith("Runs: 1, 1 unfinished")
    assert "## Model selection: test-domain validation set (oracle)" in lines
    assert any("100 * std(acc / sqrt(n)) with ddof 0" in line for line in lines)
    start = lines.index("### Toy")
    assert lines[start : start + 6] == [
        "### Toy",
        "",
        "| Algorithm | 0 | 1 | 2 | Avg |",
        "|---|---|---|---|---|",
        "| ERM | 65.0 ± 3.5 | 50.0 ± 0.0 | X | X |",
        "| Irm | 30.0 ± 0.0 | 40.0 ± 0.0 | 50.0 ± 0.0 | 40.0 |",
    ]
    assert "### Averages" in lines and text.endswith("|\n")
    sample_summaries = reporting.summarize_sweep(sweep, ["oracle"], error_bar="sample_std")
    sample = tables.markdown_document(sweep, sample_summaries)
    assert "ddof 1" in sample and "| ERM | 65.0 ± 7.1 | 50.0 | X | X |" in sample


def test_latex_document_escapes_and_keeps_domainbeds_layout() -> None:
    sweep = _sweep(RECORDS)
    text = tables.latex_document(sweep, reporting.summarize_sweep(sweep, ["oracle"]))
    lines = text.splitlines()
    assert lines[:4] == [
        r"\documentclass{article}",
        r"\usepackage{booktabs}",
        r"\usepackage{adjustbox}",
        r"\begin{document}",
    ]
    assert "% Total records: 7" in lines and lines[-1] == r"\end{document}"
    assert r"\subsection{Model selection: test-domain validation set (oracle)}" in lines
    assert (
        r"\textbf{Algorithm} & \textbf{+90\%} & \textbf{+80\%} & \textbf{-90\%} & \textbf{Avg} \\"
        in lines
    )  # noqa: E501
    assert r"ERM & 65.0 $\pm$ 3.5 & 50.0 $\pm$ 0.0 & X & X \\" in lines
    assert r"\subsubsection{Averages}" in lines and r"\begin{tabular}{lccc}" in lines
    assert tables.latex_escape("SC_group_1 & 5% #1 {x}") == r"SC\_group\_1 \& 5\% \#1 \{x\}"


def test_json_document_per_method_dataset_algorithm_and_column() -> None:
    sweep = _sweep(RECORDS)
    summaries = reporting.summarize_sweep(sweep, ["oracle", "training_domain"])
    document = json.loads(export.json_document(sweep, summaries))
    assert document["total_records"] == 7
    assert document["methods"]["oracle"]["error_bar"] == "standard_error"
    assert list(document["methods"]) == ["oracle", "training_domain"]
    toy = document["methods"]["oracle"]["datasets"]["Toy"]
    assert list(toy) == ["ERM", "IRM"] and list(toy["ERM"]) == ["0", "1", "2", "Avg"]
    assert toy["ERM"]["0"] == {
        "mean": pytest.approx(65.0),
        "error": pytest.approx(3.5355339),
        "trials": 2,
    }  # noqa: E501
    assert toy["ERM"]["2"] == {"mean": None, "error": None, "trials": 0}
    assert toy["IRM"]["Avg"] == {"mean": pytest.approx(40.0), "error": None, "trials": None}
    averages = document["methods"]["oracle"]["averages"]
    assert averages["ERM"]["Toy"]["mean"] == pytest.approx(62.5)


@pytest.mark.parametrize("module", [catalog, names, records, summary, tables, export, reporting])
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
