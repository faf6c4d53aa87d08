"""Runs of the default size on several devices finish, every time.

A run of DomainBed's default size (RotatedMNIST with test env 0: 5 training domains of
64 examples, the whole of every split evaluated, then a checkpoint; only the number of
steps is cut, to 1, whose evaluation and checkpoint are the run's final ones)
dispatches about 90 evaluation programs with an all-reduce each. Dispatched without
waiting, they deadlocked XLA's CPU devices in most runs on 4 devices ("Expected 4
threads to join the rendezvous, but only 3 of them arrived"), while the tiny runs of
``test_parallel.py`` (32 evaluation examples) never queue enough programs to see it.

So these tests run that size, and repeat it in one process (one compilation): 12 times
on 4 devices, the layout of the deadlock that was fixed, and 6 times on each other
layout. A hang in 1 run of 5 then passes with probability ``0.8 ** 12 = 0.07`` on 4
devices and ``0.8 ** 6 = 0.26`` on each other layout, and ``0.8 ** 36 < 1e-3`` where
it shows on every layout, as an unbounded queue of programs did (no run of 20 finished
on 4 devices). A hang makes XLA abort the worker after 40 s, which fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from parallel_helpers import run_processes, run_worker

DEFAULT_SIZE = dict(
    dataset="RotatedMNIST",
    algorithm="corgrad",
    test_envs=[0],  # 5 training domains, DomainBed's 64 examples each
    steps=1,  # one evaluation: the code before the fix aborted in it in 3 of 3 runs
    checkpoint_freq=10,  # the record, evaluation and checkpoint of the last step
    seed=0,
)
REPEATS = 6
"""Runs per layout: a 1-in-5 hang survives them with probability 0.8 ** 6 = 0.26."""
DEADLOCK_REPEATS = 12
"""Runs on the 4 devices of the deadlock that was fixed, where before the fix no run of
20 finished: a 1-in-5 hang survives them with probability 0.8 ** 12 = 0.07."""


def _repeated(root: Path, config: dict[str, Any], repeats: int = REPEATS) -> list[dict]:
    return [dict(config, output_dir=str(root / f"run{index}")) for index in range(repeats)]


def _assert_finished_identically(root: Path, runs: list[list[dict]]) -> None:
    assert [r["step"] for r in runs[0]] == [0]
    for records in runs[1:]:
        assert records == runs[0]  # every repeat: the same records, deterministic
    for index in range(len(runs)):
        assert (root / f"run{index}" / "done").exists()


@pytest.mark.slow
@pytest.mark.parametrize("devices,repeats", [(2, REPEATS), (4, DEADLOCK_REPEATS), (8, REPEATS)])
def test_default_size_runs_finish_on_data_parallel_meshes(
    tmp_path: Path, devices: int, repeats: int
) -> None:
    result = run_worker(devices, _repeated(tmp_path, DEFAULT_SIZE, repeats))
    assert result["devices"] == devices
    _assert_finished_identically(tmp_path, result["runs"])


@pytest.mark.slow
def test_default_size_runs_finish_domain_parallel(tmp_path: Path) -> None:
    config = dict(DEFAULT_SIZE, test_envs=[0, 1], domain_parallel=2, param_sharding="fsdp")
    result = run_worker(4, _repeated(tmp_path, config))  # 4 training domains, mesh (2, 2)
    _assert_finished_identically(tmp_path, result["runs"])


@pytest.mark.slow
def test_default_size_runs_finish_on_two_processes(tmp_path: Path) -> None:
    results = run_processes(2, 2, {"runs": _repeated(tmp_path, DEFAULT_SIZE)})
    assert [(r["devices"], r["processes"]) for r in results] == [(4, 2), (4, 2)]
    assert results[1]["runs"] == results[0]["runs"]
    _assert_finished_identically(tmp_path, results[0]["runs"])
