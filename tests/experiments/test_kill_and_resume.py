"""A real run killed with SIGKILL mid-run resumes and ends like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer_helpers import comparable, tiny_config

from experiments import outputs, train

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
