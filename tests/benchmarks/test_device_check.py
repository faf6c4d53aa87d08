"""``benchmarks/device_check.py --quick`` on the CPU: one table with a row for every
check, within its time budget; what does not fit the budget is listed as skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[2]
STEP_CASES = [f"{algorithm}, {method}, {dtype}" for method in ("loop", "vmap")
              for dtype in ("float32", "bfloat16") for algorithm in ("ERM", "CorGrad", "PCGrad")]
ROWS = [  # (check, case), in the table's order
    *[("CorGrad update alone, ResNet-18 shapes (11.7M params)", f"D={d}") for d in (3, 5)],
    ("input pipeline", "train batches, 3 x 4 (decode + augment)"),
    ("input pipeline", "evaluation pass (read + resize), compiled"),
    *[("RotatedMNIST, 20 steps, test env 0 (0 degrees)", case) for case in ("ERM", "CorGrad")],
    *[("train step, MNIST_CNN, 3 x 4 at 28x28", case) for case in STEP_CASES],
]


def _device_check(*flags: str, timeout: float) -> tuple[int, str, list[list[str]]]:
    """Exit code, stdout and the table's rows (cells) of a quick run."""
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [environment.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--quick", *flags],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout,
    )
    lines = done.stdout.splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in lines if line.startswith("| ") and not line.startswith("| check ")]
    return done.returncode, done.stdout, rows


def _matches(rows: list[list[str]]) -> None:
    assert len(rows) == len(ROWS)
    for cells, (check, case) in zip(rows, ROWS, strict=True):
        assert len(cells) == 5 and cells[0].startswith(check) and cells[1] == case, cells


@pytest.mark.slow
def test_the_quick_check_measures_every_row_and_exits_0() -> None:
    code, stdout, rows = _device_check(timeout=1200)
    assert code == 0, stdout[-3000:]
    first = stdout.splitlines()[0]
    assert first.startswith("device_check --quick: 1 x cpu (cpu), jax " + jax.__version__)
    _matches(rows)
    assert not any(cells[2].startswith("skipped") for cells in rows)
    for cells in rows[:2]:  # the update against the floor
        assert cells[2].endswith("GB/s)") and cells[3].endswith("x")
    for cells in rows[2:4]:
        assert "images/s" in cells[2]
    assert "test " in rows[4][2] and rows[5][3].endswith("x")
    for cells in rows[6:]:  # every step has a time and a ratio to an ERM step
        assert "ms/step" in cells[2] and cells[3].endswith("x") and cells[4].startswith("ERM, ")
    assert stdout.rstrip().endswith("18 rows measured, 0 skipped (time budget), 0 failed")


def test_checks_that_do_not_fit_the_budget_are_listed_as_skipped() -> None:
    code, stdout, rows = _device_check("--budget_s", "0", timeout=300)
    assert code == 0, stdout[-3000:]
    _matches(rows)
    assert all(cells[2].startswith("skipped: needs about") for cells in rows)
    assert stdout.rstrip().endswith("0 rows measured, 18 skipped (time budget), 0 failed")


def test_the_watchdog_prints_what_was_measured_and_exits_3() -> None:
    code, stdout, rows = _device_check("--hard_limit_s", "1", timeout=300)
    assert code == 3
    assert "stopped by the watchdog after 1 s" in stdout
    assert stdout.splitlines()[0].startswith("device_check --quick: ")
    assert "| check | case | result | ratio | ratio to |" in stdout


def _device_check_module() -> types.ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return device_check


def test_checks_runs_only_the_named_checks_in_the_table_order(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each check replaced by one that records its call and adds a row; the real checks
    # run in the quick run above.
    device_check = _device_check_module()
    called: list[str] = []
    for name in list(device_check.CHECKS):
        def record(sizes: object, table: object, name: str = name) -> None:
            called.append(name)
            table.add(f"{name} check", "case", "1 ms")  # type: ignore[attr-defined]

        monkeypatch.setitem(device_check.CHECKS, name, record)
    assert device_check.main(["--quick", "--checks", "pipeline", "update"]) == 0  # out of order
    assert called == ["update", "pipeline"] == [n for n in device_check.CHECKS if n in called]
    stdout = capsys.readouterr().out
    assert [line.split(" |")[0] for line in stdout.splitlines() if line.startswith("| ")
            and not line.startswith("| check ")] == ["| update check", "| pipeline check"]
    assert stdout.rstrip().endswith("2 rows measured, 0 skipped (time budget), 0 failed")


def test_a_check_that_raises_is_a_failed_row_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    device_check = _device_check_module()

    def broken(sizes: object, table: object) -> None:
        raise OSError("no space left on device\nsecond line")

    monkeypatch.setitem(device_check.CHECKS, "update", broken)
    code = device_check.main(["--quick", "--checks", "update", "pipeline"])
    stdout = capsys.readouterr().out
    assert code == 1
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| check ")]
    assert rows[0] == ["update check", "", "failed: OSError: no space left on device", "", ""]
    assert [cells[1] for cells in rows[1:]] == [
        "train batches, 3 x 4 (decode + augment)", "evaluation pass (read + resize), compiled"]
    assert all("images/s" in cells[2] for cells in rows[1:])
    assert stdout.rstrip().endswith("2 rows measured, 0 skipped (time budget), 1 failed")
