"""``python -m experiments.collect_results`` and its Python API on hand-written runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import collect_results
from experiments import run_dir as outputs
from experiments.results import names

REPO = Path(__file__).resolve().parents[2]

ENVIRONMENTS = ["A", "B", "C"]


def _write_run(
    root: Path,
    name: str,
    algorithm: str,
    test_env: int,
    trial: int,
    checkpoints: list[tuple[float, float, float]],
    *,
    hparams_seed: int = 0,
    done: bool = True,
) -> None:
    """One run; each checkpoint is (val acc of both training envs, test in acc, other)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    for step, (val, test, other) in enumerate(checkpoints):
        record = {
            "step": 10 * step,
            "loss": 1.0,
            "environments": ENVIRONMENTS,
            "args": {
                "dataset": "Toy",
                "algorithm": algorithm,
                "test_envs": [test_env],
                "hparams_seed": hparams_seed,
                "trial_seed": trial,
            },
        }
        for env in range(3):
            # Training envs: out acc = val; test env: in acc = test, out acc = other.
            record[f"env{env}_in_acc"] = test if env == test_env else other
            record[f"env{env}_out_acc"] = other if env == test_env else val
        outputs.append_record(run_dir / outputs.RESULTS, record)
    if done:
        (run_dir / outputs.DONE).write_text("done\n")


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    # ERM, test env 0: the best validation step is chosen (0.8 -> test 0.60; 0.9 -> 0.70).
    _write_run(tmp_path, "e00", "erm", 0, 0, [(0.5, 0.99, 0.0), (0.8, 0.60, 0.9), (0.7, 0.1, 0)])
    _write_run(tmp_path, "e01", "erm", 0, 1, [(0.9, 0.70, 0.0), (0.9, 0.20, 0.0)])  # tie: first
    # ERM, test env 2: trials 0.50 and 0.40.
    _write_run(tmp_path, "e20", "erm", 2, 0, [(0.6, 0.50, 0.3)])
    _write_run(tmp_path, "e21", "erm", 2, 1, [(0.6, 0.40, 0.3)], done=False)
    # CorGrad, test env 0: two hparams draws in trial 0; the better validated one counts.
    _write_run(tmp_path, "c00", "corgrad", 0, 0, [(0.7, 0.95, 0.0)])
    _write_run(tmp_path, "c00h1", "corgrad", 0, 0, [(0.85, 0.75, 0.0)], hparams_seed=1)
    _write_run(tmp_path, "c01", "corgrad", 0, 1, [(0.8, 0.65, 0.0)])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / outputs.RESULTS).write_text("")
    return tmp_path


def test_training_domain_validation_picks_checkpoints_and_hparams(sweep_dir: Path) -> None:
    runs = {
        (r.algorithm, r.test_envs, r.trial_seed, r.hparams_seed): r
        for r in collect_results.load_runs(sweep_dir)
    }
    assert len(runs) == 7
    assert runs[("erm", (0,), 0, 0)].step == 10 and runs[("erm", (0,), 0, 0)].test_acc == 0.6
    assert runs[("erm", (0,), 1, 0)].step == 0  # the first of equal validation accuracies
    assert not runs[("erm", (2,), 1, 0)].finished
    assert runs[("erm", (2,), 1, 0)].environments == tuple(ENVIRONMENTS)
    selected = collect_results.select_hparams(runs.values())
    assert selected[("Toy", "corgrad", (0,), 0)] == 0.75


def test_equal_hparams_draws_go_to_the_highest_hparams_seed(tmp_path: Path) -> None:
    # As DomainBed's SelectionMethod.hparams_accs: a stable sort, then the last.
    for seed, test in [(0, 0.1), (1, 0.2), (2, 0.3)]:
        _write_run(tmp_path, f"h{seed}", "erm", 0, 0, [(0.8, test, 0.0)], hparams_seed=seed)
    _write_run(tmp_path, "h3", "erm", 0, 0, [(0.7, 0.9, 0.0)], hparams_seed=3)
    runs = collect_results.load_runs(tmp_path)
    assert collect_results.select_hparams(reversed(runs)) == {("Toy", "erm", (0,), 0): 0.3}
    assert "| ERM | 30.0 ± 0.0 | 30.0 |" in collect_results.results_table(runs)


def test_the_table_shows_domainbeds_numbers(sweep_dir: Path) -> None:
    table = collect_results.results_table(collect_results.load_runs(sweep_dir))
    lines = table.splitlines()
    assert "### Toy" in lines
    assert "| Algorithm | A | C | Avg |" in lines  # the tested environments
    # ERM: env A trials 60, 70 -> 65.0 ± std(0.6, 0.7) / sqrt(2) = 3.5; env C 50, 40 ->
    # 45.0 ± 3.5; Avg: the mean of the row, (65 + 45) / 2, without error bar.
    assert "| ERM | 65.0 ± 3.5 | 45.0 ± 3.5 | 55.0 |" in lines
    # CorGrad: env A trials 75 (hparams draw 1), 65 -> 70.0 ± 3.5; no run on C.
    assert "| CorGrad | 70.0 ± 3.5 | X | X |" in lines
    assert lines.index("| ERM | 65.0 ± 3.5 | 45.0 ± 3.5 | 55.0 |") < lines.index(
        "| CorGrad | 70.0 ± 3.5 | X | X |"
    )
    assert any("1 unfinished" in line for line in lines)
    assert any("100 * std(acc / sqrt(n))" in line for line in lines)
    assert collect_results.results_table([]) == "No results found.\n"


def test_runs_with_two_test_envs_are_not_columns_of_training_domain_validation(
    sweep_dir: Path,
) -> None:
    _write_run(sweep_dir, "pair", "erm", 0, 0, [(0.1, 0.99, 0.0)])
    pair = sweep_dir / "pair" / outputs.RESULTS
    lines = [json.loads(line) for line in pair.read_text().splitlines()]
    lines[0]["args"]["test_envs"] = [0, 1]
    pair.write_text("".join(json.dumps(line) + "\n" for line in lines))
    table = collect_results.results_table(collect_results.load_runs(sweep_dir))
    assert "| Algorithm | A | C | Avg |" in table
    assert "| ERM | 65.0 ± 3.5 | 45.0 ± 3.5 | 55.0 |" in table


def test_the_command_prints_every_method(
    sweep_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert collect_results.main([str(sweep_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Total records: 10"
    assert [line for line in lines if line.startswith("## ")] == [
        "## Model selection: training-domain validation set",
        "## Model selection: leave-one-domain-out cross-validation",
        "## Model selection: test-domain validation set (oracle)",
    ]
    assert lines.count("| Algorithm | A | B | C | Avg |") == 3  # every environment
    assert "| ERM | 65.0 ± 3.5 | X | 45.0 ± 3.5 | X |" in lines  # training-domain
    # Oracle: the last checkpoints: ERM env A trials 10 (step 20), 20 (step 10).
    assert "| ERM | 15.0 ± 3.5 | X | 45.0 ± 3.5 | X |" in lines
    assert "| ERM | X | X | X | X |" in lines  # leave-one-out: no run with two test envs
    assert "| ERM | 55.0 ± 0.0 | 55.0 |" in lines  # averages: per trial (60+50)/2, (70+40)/2


def test_the_command_flags(
    sweep_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert collect_results.main([str(sweep_dir), "--selection", "oracle"]) == 0
    out = capsys.readouterr().out
    assert "## Model selection: test-domain validation set (oracle)" in out
    assert "training-domain" not in out
    assert collect_results.main([str(sweep_dir), "--latex", "--selection", "oracle"]) == 0
    assert r"ERM & 15.0 $\pm$ 3.5 & X & 45.0 $\pm$ 3.5 & X \\" in capsys.readouterr().out
    assert (
        collect_results.main([str(sweep_dir), "--format", "json", "--error_bar", "sample_std"]) == 0
    )
    document = json.loads(capsys.readouterr().out)
    cell = document["methods"]["training_domain"]["datasets"]["Toy"]["erm"]["A"]
    assert cell == {"mean": pytest.approx(65.0), "error": pytest.approx(7.0710678), "trials": 2}
    output = tmp_path / "results.md"
    assert (
        collect_results.main([str(sweep_dir), "--error_bar", "std", "--output", str(output)]) == 0
    )
    assert output.read_text() == capsys.readouterr().out
    assert "| ERM | 65.0 ± 5.0 | X | 45.0 ± 5.0 | X |" in output.read_text()


@pytest.mark.parametrize(
    "make, argv, message",
    [
        (None, ["missing"], "missing is not a directory"),
        ("empty", ["."], "no records (results.jsonl) found under"),
        ("bad", ["."], "results.jsonl:1: not a JSON line"),
        (None, [".", "--latex", "--format", "json"], "--latex contradicts --format json"),
        (None, [".", "--selection", "best"], "invalid choice: 'best'"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: str | None,
    argv: list[str],
    message: str,
) -> None:
    (tmp_path / "run").mkdir()
    if make == "bad":
        (tmp_path / "run" / outputs.RESULTS).write_text("{oops\n{}\n")
    argv = [str(tmp_path / a) if i == 0 else a for i, a in enumerate(argv)]
    try:
        code = collect_results.main(argv)
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("python -m experiments.collect_results: error: ") and message in line


def test_results_tables_of_a_directory_has_every_method(sweep_dir: Path) -> None:
    text = collect_results.results_tables(sweep_dir)
    assert text.count("## Model selection: ") == 3 and text.startswith("Total records: 10\n")
    assert json.loads(collect_results.results_tables(sweep_dir, "json"))["total_records"] == 10


def test_the_command_imports_no_jax(sweep_dir: Path) -> None:
    code = (
        "import sys\n"
        "from experiments import collect_results\n"
        f"assert collect_results.main([{str(sweep_dir)!r}]) == 0\n"
        "heavy = ('jax', 'flax', 'optax', 'orbax')\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "| CorGrad | 70.0 ± 3.5 | X | X | X |" in result.stdout  # the display names


def test_the_default_display_names_are_the_registrys() -> None:
    from experiments.algorithms import ALGORITHMS

    assert dict(names.default_display_names()) == {
        name: algorithm.display_name for name, algorithm in ALGORITHMS.items()}
    assert list(names.default_display_names()) == list(ALGORITHMS)


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    _write_run(tmp_path, "r", "erm", 0, 0, [(0.5, 0.5, 0.5), (0.9, 0.3, 0.5)])
    path = tmp_path / "r" / outputs.RESULTS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:40])  # killed in the middle of a write
    (run,) = collect_results.load_runs(tmp_path)
    assert run.step == 0 and run.test_acc == 0.5
    assert json.loads(lines[0])["step"] == 0
