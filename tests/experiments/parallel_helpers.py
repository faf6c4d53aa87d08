"""Launching the trainer in fresh processes with a fixed number of virtual CPU devices.

The device count of a JAX process is fixed when it starts, so every multi-device check
runs ``tests/experiments/parallel_worker.py`` in a new process with
``--xla_force_host_platform_device_count``; a multi-process job is several such
processes joined by :func:`jax.distributed.initialize` over localhost.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def environment(devices: int, **extra: str) -> dict[str, str]:
    """The environment of a process with ``devices`` virtual CPU devices."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(ROOT),
        **extra,
    )


def result(stdout: str) -> dict[str, Any]:
    """The ``RESULT <json>`` line a worker printed."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stdout[-3000:]
    return json.loads(lines[0][len("RESULT ") :])


def _worker_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.experiments.parallel_worker", json.dumps(spec)]


def run_worker(devices: int, runs: list[dict[str, Any]], *, timeout: float = 900,
               **spec: Any) -> dict[str, Any]:
    """The worker's result for ``runs`` on ``devices`` virtual CPU devices."""
    done = subprocess.run(_worker_command({"runs": runs, **spec}), env=environment(devices),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return result(done.stdout)


def free_port() -> int:
    """A TCP port of localhost that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_processes(processes: int, devices: int, spec: dict[str, Any], *,
                  timeout: float = 900) -> list[dict[str, Any]]:
    """Every process's result for one job of ``processes`` x ``devices`` CPU devices."""
    port, launched = free_port(), []
    for index in range(processes):
        variables = environment(
            devices, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index))
        launched.append(subprocess.Popen(
            _worker_command(spec), env=variables, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    try:
        outputs = [process.communicate(timeout=timeout) for process in launched]
    finally:
        for process in launched:
            process.kill()
    for process, (_, stderr) in zip(launched, outputs, strict=True):
        assert process.returncode == 0, stderr[-4000:]
    return [result(stdout) for stdout, _ in outputs]
