"""Our tables equal DomainBed's ``collect_results.py`` on a DomainBed sweep, cell for cell.

``tests/fixtures/domainbed_sweep.json`` is a synthetic DomainBed sweep (5 datasets, 5
algorithms, runs with one and two test environments, ties, killed and missing runs), and
``domainbed_results.txt`` / ``.tex`` are what DomainBed's own ``collect_results.py``
(commit ``b93c22a1cfc3b2428398272c1a116c8de1f4139e``) printed for it, plain and with
``--latex``; ``tools/make_domainbed_sweep.py`` made all three. The sweep is written out
as DomainBed run directories and read by ``python -m experiments.collect_results``; every
table of the three selection methods, the averages tables included, must show the same
labels and the same numbers.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from experiments import collect_results
from experiments.results import LEAVE_ONE_OUT, TRAINING_DOMAIN, load_sweep, selection

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

Tables = dict[tuple[str, str], list[list[str]]]


def _tool() -> ModuleType:
    path = REPO / "tools" / "make_domainbed_sweep.py"
    spec = importlib.util.spec_from_file_location("make_domainbed_sweep", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("domainbed") / "sweep"
    sweep = json.loads((FIXTURES / "domainbed_sweep.json").read_text())
    _tool().expand_sweep(sweep, directory)
    return directory


def _normalize(cell: str) -> str:
    return cell.replace("+/-", "±").replace(r"$\pm$", "±").replace(r"\_", "_").strip()


def parse_domainbed_text(text: str) -> tuple[str, Tables]:
    """DomainBed's plain output: ``{(method, dataset or "Averages"): rows}``."""
    lines = text.splitlines()
    found: Tables = {}
    rows: list[list[str]] = []
    for line in lines:
        match = re.match(
            r"-------- (?:Dataset: (.*)|(Averages)), model selection method: (.*)", line
        )
        if match:
            rows = found.setdefault((match[3], match[1] or match[2]), [])
        elif line.strip() and not line.startswith("Total records"):
            rows.append([_normalize(c) for c in re.split(r" {2,}", line.strip())])
    return lines[0], found


def parse_markdown(text: str) -> tuple[str, Tables]:
    """Our markdown: the same structure."""
    lines = text.splitlines()
    found: Tables = {}
    rows: list[list[str]] = []
    method = ""
    for line in lines:
        if line.startswith("## Model selection: "):
            method = line.removeprefix("## Model selection: ")
        elif line.startswith("### "):
            rows = found.setdefault((method, line.removeprefix("### ")), [])
        elif line.startswith("|") and not line.startswith("|---"):
            rows.append([_normalize(c) for c in line.strip("|").split(" | ")])
    return lines[0], found


def parse_latex(text: str) -> tuple[str, Tables]:
    """DomainBed's or our LaTeX: ``\\subsection`` per method, ``\\subsubsection`` per table."""
    found: Tables = {}
    rows: list[list[str]] = []
    method = ""
    total = next(line for line in text.splitlines() if line.startswith("% Total records"))
    for line in text.splitlines():
        if line.startswith(r"\subsection{Model selection: "):
            method = line.removeprefix(r"\subsection{Model selection: ").removesuffix("}")
        elif line.startswith(r"\subsubsection{"):
            title = line.removeprefix(r"\subsubsection{").removesuffix("}")
            rows = found.setdefault((method, title), [])
        elif " & " in line and line.rstrip().endswith("\\\\"):
            cells = line.rstrip().removesuffix("\\\\").split(" & ")
            cells = [re.sub(r"\\textbf\{(.*?)\}?\s*$", r"\1", c.strip()) for c in cells]
            rows.append([_normalize(c) for c in cells])
    return total, found


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert collect_results.main(argv) == 0
    return capsys.readouterr().out


def test_the_fixture_has_every_table_of_every_method() -> None:
    _, expected = parse_domainbed_text((FIXTURES / "domainbed_results.txt").read_text())
    methods = {method for method, _ in expected}
    assert methods == {m.name for m in selection.SELECTION_METHODS.values()}
    assert len(expected) == 3 * 6  # 5 datasets and the averages, per method
    cells = [cell for rows in expected.values() for row in rows[1:] for cell in row[1:]]
    assert sum(cell == "X" for cell in cells) > 50 and sum("±" in cell for cell in cells) > 150


def test_markdown_equals_domainbeds_output(
    sweep_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected_total, expected = parse_domainbed_text(
        (FIXTURES / "domainbed_results.txt").read_text()
    )
    total, tables = parse_markdown(_run([str(sweep_dir)], capsys))
    assert total == expected_total
    assert list(tables) == list(expected)  # the same tables, in the same order
    for key, rows in expected.items():
        assert tables[key] == rows, key


def test_latex_equals_domainbeds_latex(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected_total, expected = parse_latex((FIXTURES / "domainbed_results.tex").read_text())
    total, tables = parse_latex(_run([str(sweep_dir), "--latex"], capsys))
    assert total == expected_total
    assert list(tables) == list(expected)
    for key, rows in expected.items():
        assert tables[key] == rows, key


def test_json_numbers_round_to_domainbeds(
    sweep_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, expected = parse_domainbed_text((FIXTURES / "domainbed_results.txt").read_text())
    document = json.loads(_run([str(sweep_dir), "--format", "json"], capsys))
    names = {m.name: m.key for m in selection.SELECTION_METHODS.values()}
    compared = 0
    for (method, title), (header, *rows) in expected.items():
        results = document["methods"][names[method]]
        table = results["averages"] if title == "Averages" else results["datasets"][title]
        for algorithm, *cells in rows:
            for column, cell in zip(header[1:], cells, strict=True):
                value = table[algorithm][column]
                if value["mean"] is None:
                    text = "X"
                elif value["error"] is None:
                    text = f"{value['mean']:.1f}"
                else:
                    text = f"{value['mean']:.1f} ± {value['error']:.1f}"
                assert text == cell, (method, title, algorithm, column)
                compared += 1
    assert compared == 3 * (5 * 4 + 4 * 5 * 5 + 5 * 6)


def test_one_method_alone(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, expected = parse_domainbed_text((FIXTURES / "domainbed_results.txt").read_text())
    _, tables = parse_markdown(_run([str(sweep_dir), "--selection", "leave_one_out"], capsys))
    assert tables == {k: v for k, v in expected.items() if k[0] == LEAVE_ONE_OUT.name}


def test_the_sweep_exercises_ties_and_missing_data(sweep_dir: Path) -> None:
    """What the equality above depends on is in the fixture (else it tests less)."""
    sweep = load_sweep([sweep_dir])
    records = sweep.records
    assert sum(not run.finished for run in sweep.runs) > 10
    groups = selection.group_records(records).values()
    checkpoint_ties = hparams_ties = step_ties = 0
    for group in groups:
        by_seed: dict[int, list] = {}
        for record in group:
            by_seed.setdefault(record.hparams_seed, []).append(record)
        accuracies = []
        for seed_records in by_seed.values():
            single = [r for r in seed_records if len(r.test_envs) == 1]
            validations = [selection.checkpoint_accuracy(r).validation for r in single]
            checkpoint_ties += bool(validations) and validations.count(max(validations)) > 1
            by_step: dict[int, list] = {}
            for record in seed_records:
                by_step.setdefault(record.step, []).append(record)
            step_accs = [LEAVE_ONE_OUT.step_accuracy(rs) for rs in by_step.values()]
            step_vals = [a.validation for a in step_accs if a is not None]
            step_ties += bool(step_vals) and step_vals.count(max(step_vals)) > 1
            accuracy = TRAINING_DOMAIN.run_accuracy(seed_records)
            if accuracy is not None:
                accuracies.append(accuracy.validation)
        hparams_ties += bool(accuracies) and accuracies.count(max(accuracies)) > 1
    assert checkpoint_ties > 10 and hparams_ties > 10 and step_ties > 10
