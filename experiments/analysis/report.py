"""``python -m experiments.analysis``: run the three analyses and write the REPORT.

Writes into ``--output_dir``:

==============================  ========================================================
``fig3_angle_density.png``      eq. (9) against Monte Carlo histograms, one panel per n
``fig3_angle_variance.png``     the densities on [0, pi]; eq. (10) shrinking with n
``fig6_modification_ratio.png`` modification ratio per granularity, 10 bins of steps
``fig7_modification_frequency.png``  modification frequency per granularity
``table2_ablation.png``         gains over ERM of the ablation, next to the paper's
``REPORT.md``                   every number and every verdict, computed in this run
``analysis.json``               the numbers behind the report
``figures6_7_run/``             the run directory of Figures 6 and 7 (redone each time)
``table2/``                     the ablation's run directories (the trainer's output)
==============================  ========================================================

Every sentence of the REPORT that compares with the paper is built from this run's
numbers (:mod:`~experiments.analysis.verdicts`); nothing is decided in advance. The
paper's numbers are those ``docs/algorithm.md`` quotes (Sec. 10,
:mod:`~experiments.analysis.paper`). The default settings are scaled down to run in
about half an hour on a 2-core CPU (the REPORT lists what was scaled and by how much);
``--quick`` is a smoke test of seconds per part.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.analysis import ablation, angles, granularity, paper
from experiments.analysis.granularity_plot import plot_granularities
from experiments.analysis.granularity_probe import random_reference
from experiments.analysis.report_figure3 import figure3_section
from experiments.analysis.report_figures6_7 import figures6_7_section
from experiments.analysis.report_table2 import table2_section
from experiments.analysis.settings import (
    AnalysisSettings,
    build_parser,
    check,
    granularity_run,
    settings_from_args,
    table2_sweeps,
)
from experiments.cli import run_command
from experiments.data import get_dataset_spec

REPORT = "REPORT.md"
NUMBERS = "analysis.json"
Log = Callable[[str], None]


def scale_section(settings: AnalysisSettings, result: ablation.AblationResult) -> list[str]:
    """What was scaled down, computed from the settings."""
    steps, table2_steps = settings.granularity_steps, settings.table2_steps
    test_envs = ", ".join(
        f"{d} {list(e)} of {len(get_dataset_spec(d).environments)}"
        for d, e in result.test_envs.items()
    )
    return [
        "## What was scaled down (and why)",
        "",
        "The defaults must run end to end in at most 30 minutes on a 2-core CPU, where one "
        "MNIST_CNN step costs a few tenths of a second. Compared with the paper:",
        "",
        f"- Figures 6/7: {steps} steps instead of {paper.STEPS:,} ({steps / paper.STEPS:.1%}), "
        f"batch {settings.granularity_batch_size} per domain (paper {paper.BATCH_SIZE}), "
        f"MNIST_CNN on {settings.granularity_dataset} instead of ResNet-18 on PACS-like data; "
        "one trajectory for all granularities (the paper trained each method).",
        f"- Table 2: {table2_steps} steps ({table2_steps / paper.STEPS:.1%} of "
        f"{paper.STEPS:,}), batch {settings.table2_batch_size} per domain, test envs "
        f"{test_envs}, {settings.table2_trials} trials, default hparams only (no random "
        f"search), at most {settings.table2_max_eval_examples or 'all'} examples evaluated "
        "per split.",
        f"- Figure 3: {settings.angle_max_samples:,} Monte Carlo samples per n, fewer for "
        f"large n (n x samples <= {settings.angle_max_floats:.0e}).",
        "",
        "For a full-size run: `python -m experiments.analysis --granularity_steps 5000 "
        "--table2_steps 5000 --table2_test_envs 0 1 2 3 4 5 --table2_batch_size 64 "
        "--table2_max_eval_examples all` (hours on this CPU).",
    ]


def _load() -> float:
    """The 1-minute load average (NaN where unknown)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def timing_section(wall: float, load: tuple[float, float], timings: dict[str, float]) -> list[str]:
    """The wall time, the machine, its load at the start and the end, and each part's."""
    cores = os.cpu_count()
    return [
        "## Timing",
        "",
        f"**Wall time, end to end: {wall / 60:.1f} min ({wall:.0f} s)** on {cores} "
        f"CPU core(s) ({platform.processor() or platform.machine()}), JAX compilation "
        f"included. Load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the "
        f"end (above {cores} means other processes shared the cores).",
        "",
        "| part | seconds |",
        "|---|---:|",
        *[f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()],
    ]


@contextlib.contextmanager
def _timed(timings: dict[str, float], part: str, log: Log) -> Iterator[None]:
    log(f"{part} ...")
    tick = time.perf_counter()
    yield
    timings[part] = time.perf_counter() - tick


@dataclasses.dataclass(frozen=True)
class Results:
    """What the three parts computed."""

    angle_results: list[angles.AngleResult]
    trace: granularity.GranularityTrace
    binned: granularity.BinnedTrace
    reference: dict[int, dict[str, float]]
    ablation_result: ablation.AblationResult


def _run_parts(
    settings: AnalysisSettings, output_dir: Path, timings: dict[str, float], log: Log
) -> Results:
    """Runs Figure 3, Figures 6/7 and Table 2, writing their figures."""
    with _timed(timings, "Figure 3", log):
        angle_results = angles.analyze_angles(
            settings.angle_dimensions,
            max_samples=settings.angle_max_samples,
            max_floats=settings.angle_max_floats,
            seed=settings.seed,
        )
        angles.plot_angles(angle_results, output_dir)
    with _timed(timings, "Figures 6 and 7", log):
        config = granularity_run(settings, output_dir)
        trace = granularity.trace_granularities(config, num_slices=settings.num_slices, log=log)
        binned = granularity.bin_trace(trace, 10)
        reference = random_reference(
            granularity.model_params(config), sorted({3, 5, trace.num_domains}),
            seed=settings.seed,
        )
        plot_granularities(trace, binned, reference, output_dir)
    with _timed(timings, "Table 2", log):
        result = ablation.run_ablation(table2_sweeps(settings, output_dir))
        ablation.plot_ablation(result, output_dir)
    return Results(angle_results, trace, binned, reference, result)


def _report(
    settings: AnalysisSettings, results: Results, command: str, wall: float,
    timing_lines: Sequence[str],
) -> list[str]:
    """The lines of ``REPORT.md``."""
    figure3_lines, figure3_findings = figure3_section(results.angle_results)
    figures6_7_lines, figures6_7_findings = figures6_7_section(
        results.trace, results.binned, results.reference
    )
    table2_lines, table2_findings = table2_section(results.ablation_result)
    findings = figure3_findings + figures6_7_findings + table2_findings
    return [
        "# CorGrad: the paper's analyses, reproduced",
        "",
        f"Generated by `{command}` on "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}. Every number and every "
        "verdict below was computed in this run; the paper's numbers are quoted from "
        "`docs/algorithm.md` (Sec. 10).",
        "",
        "## Findings",
        "",
        *[f"- {f}" for f in findings],
        f"- Wall time {wall / 60:.1f} min.",
        "",
        *figure3_lines,
        "",
        *figures6_7_lines,
        "",
        *table2_lines,
        "",
        *scale_section(settings, results.ablation_result),
        "",
        *timing_lines,
        "",
    ]


def _numbers(
    settings: AnalysisSettings, results: Results, timings: dict[str, float], wall: float
) -> dict[str, Any]:
    """The contents of ``analysis.json``."""
    return {
        "settings": dataclasses.asdict(settings),
        "figure3": [r.summary() for r in results.angle_results],
        "figures6_7": {
            **granularity.summary(results.trace, results.binned),
            "random_reference": {str(k): v for k, v in results.reference.items()},
        },
        "table2": ablation.summary(results.ablation_result),
        "timings_s": timings,
        "wall_time_s": wall,
    }


def run_analysis(
    settings: AnalysisSettings,
    output_dir: Path,
    *,
    command: str = "python -m experiments.analysis",
    log: Log = print,
) -> Path:
    """Runs Figure 3, Figures 6/7 and Table 2, writes the figures, the JSON and the REPORT.

    Returns:
      The path of ``REPORT.md``.

    Raises:
      ConfigError: invalid settings (checked before any work).
    """
    started = time.perf_counter()
    load_before = _load()
    check(settings, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    results = _run_parts(settings, output_dir, timings, log)
    wall = time.perf_counter() - started
    timing_lines = timing_section(wall, (load_before, _load()), timings)
    report = _report(settings, results, command, wall, timing_lines)
    numbers = _numbers(settings, results, timings, wall)
    (output_dir / NUMBERS).write_text(
        json.dumps(_jsonable(numbers), indent=2) + "\n", encoding="utf-8"
    )
    path = output_dir / REPORT
    path.write_text("\n".join(report), encoding="utf-8")
    log(f"wrote {path} (wall time {wall / 60:.1f} min)")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def _analysis(args: argparse.Namespace, argv: Sequence[str]) -> int:
    command = " ".join(["python -m experiments.analysis", *argv])
    run_analysis(settings_from_args(args), Path(args.output_dir), command=command)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.analysis``: returns the exit code (2 on bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(build_parser(), lambda args: _analysis(args, argv), argv)
