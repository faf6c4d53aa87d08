"""``collect_results`` on hand-written runs whose table is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import collect_results
from experiments import run_dir as outputs

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
    selected = collect_results.select_hparams(runs.values())
    assert selected[("Toy", "corgrad", (0,), 0)] == 0.75


def test_the_table_shows_mean_and_std_over_trials(sweep_dir: Path) -> None:
    table = collect_results.results_table(collect_results.load_runs(sweep_dir))
    lines = table.splitlines()
    assert "### Toy" in lines
    assert "| Algorithm | A | C | Avg |" in lines
    # ERM: env A trials 60, 70 -> 65.0 ± 5.0; env C 50, 40 -> 45.0 ± 5.0;
    # per-trial averages 55, 55 -> 55.0 ± 0.0.
    assert "| ERM | 65.0 ± 5.0 | 45.0 ± 5.0 | 55.0 ± 0.0 |" in lines
    # CorGrad: env A trials 75 (hparams draw 1), 65 -> 70.0 ± 5.0; no run on C.
    assert "| CorGrad | 70.0 ± 5.0 | X | X |" in lines
    assert lines.index("| ERM | 65.0 ± 5.0 | 45.0 ± 5.0 | 55.0 ± 0.0 |") < lines.index(
        "| CorGrad | 70.0 ± 5.0 | X | X |"
    )
    assert any("1 of them unfinished" in line for line in lines)


def test_the_command_prints_the_table(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert collect_results.main([str(sweep_dir)]) == 0
    assert "| ERM | 65.0 ± 5.0 | 45.0 ± 5.0 | 55.0 ± 0.0 |" in capsys.readouterr().out


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    _write_run(tmp_path, "r", "erm", 0, 0, [(0.5, 0.5, 0.5), (0.9, 0.3, 0.5)])
    path = tmp_path / "r" / outputs.RESULTS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:40])  # killed in the middle of a write
    (run,) = collect_results.load_runs(tmp_path)
    assert run.step == 0 and run.test_acc == 0.5
    assert json.loads(lines[0])["step"] == 0
