"""A run killed with SIGKILL mid-run, or whose newest checkpoint was damaged, resumes and
ends like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from trainer_helpers import comparable, tiny_config

from experiments import run_dir as outputs
from experiments import train

ALGORITHM = "corgrad_no_smoothing"  # random domain orders: the PRNG key must resume too
STEPS, CHECKPOINT_FREQ = 24, 4
REPO = Path(__file__).resolve().parents[2]


def _command(output_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "experiments.train",
        "--algorithm", ALGORITHM,
        "--steps", str(STEPS),
        "--checkpoint_freq", str(CHECKPOINT_FREQ),
        "--hparams", json.dumps({"batch_size": 8}),
        "--max_eval_examples", "32",
        "--seed", "3",
        "--output_dir", str(output_dir),
    ]  # fmt: skip


def _environment(cache: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [environment.get("PYTHONPATH")])]
    )
    environment["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # the 2nd process skips compiling
    environment["JAX_PLATFORMS"] = "cpu"
    return environment


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_metrics(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    environment = _environment(tmp_path / "jax_cache")
    process = subprocess.Popen(
        _command(run_dir), cwd=tmp_path, env=environment,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    results = run_dir / outputs.RESULTS
    deadline = time.monotonic() + 240
    try:
        while len(outputs.read_records(results)) < 2:  # checkpoints of steps 0 and 4
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        time.sleep(0.3)  # somewhere in the middle of a later step or checkpoint
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / outputs.DONE).exists()
    killed_at = len(outputs.read_records(results))
    assert killed_at < STEPS // CHECKPOINT_FREQ + 1, "the run ended before the kill"

    finished = subprocess.run(
        _command(run_dir), cwd=tmp_path, env=environment, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resumed from the checkpoint of step" in finished.stdout

    records = outputs.read_records(results)
    steps = [record["step"] for record in records]
    assert steps == [*range(0, STEPS, CHECKPOINT_FREQ), STEPS - 1]  # no duplicates or gaps
    assert len(results.read_text().splitlines()) == len(records)  # no torn lines
    reference = train.run(
        tiny_config(
            tmp_path / "reference", ALGORITHM, steps=STEPS, checkpoint_freq=CHECKPOINT_FREQ,
            seed=3,
        ),
        log=lambda line: None,
    )  # fmt: skip
    assert comparable(records) == comparable(reference)


def _damage(checkpoint: Path, how: str) -> None:
    """Every file of ``checkpoint`` overwritten with random bytes, or cut to half."""
    rng = np.random.default_rng(0)
    files = [path for path in checkpoint.rglob("*") if path.is_file()]
    assert len(files) > 5
    for path in files:
        if how == "overwritten":
            path.write_bytes(rng.bytes(100))
        else:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("how", ["overwritten", "cut short"])
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one(
    tmp_path: Path, how: str
) -> None:
    config = tiny_config(tmp_path / "run", ALGORITHM, steps=4, checkpoint_freq=1, seed=3)
    uninterrupted = train.run(config, log=lambda line: None)
    run_dir = Path(config.output_dir)
    (run_dir / outputs.DONE).unlink()
    _damage(run_dir / outputs.CHECKPOINTS / "3", how)
    lines: list[str] = []
    resumed = train.run(config, log=lines.append)
    assert comparable(resumed) == comparable(uninterrupted)
    assert comparable(outputs.read_records(run_dir / outputs.RESULTS)) == comparable(
        uninterrupted)  # truncated to step 2, then step 3 again: no duplicate
    assert lines[0].startswith(f"checkpoint {run_dir.absolute() / 'checkpoints' / '3'} does "
                               "not restore (")
    assert "resumed from the checkpoint of step 2" in lines[1]
    assert sorted(p.name for p in (run_dir / outputs.CHECKPOINTS).iterdir()) == ["2", "3"]
    kept = run_dir / outputs.DAMAGED_CHECKPOINTS / "3"  # moved aside, not deleted
    assert len([path for path in kept.rglob("*") if path.is_file()]) > 5


def test_when_no_checkpoint_restores_the_run_stops_with_exit_2_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tmp_path / "run", ALGORITHM, steps=4, checkpoint_freq=1, seed=3)
    train.run(config, log=lambda line: None)
    run_dir = Path(config.output_dir)
    (run_dir / outputs.DONE).unlink()
    for step in ("2", "3"):
        _damage(run_dir / outputs.CHECKPOINTS / step, "overwritten")
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    code = train.main([
        "--algorithm", ALGORITHM, "--steps", "4", "--checkpoint_freq", "1", "--seed", "3",
        "--hparams", json.dumps({"batch_size": 8}), "--max_eval_examples", "32",
        "--output_dir", str(run_dir),
    ])  # fmt: skip
    assert code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[-1] == (f"python -m experiments.train: error: no checkpoint in "
                          f"{run_dir.absolute() / 'checkpoints'} restores (steps 3, 2); move "
                          "them away to start the run anew")
    after = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    assert after == before
