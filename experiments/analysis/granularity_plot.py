"""Figures 6 and 7 as images: ``fig6_modification_ratio.png`` and
``fig7_modification_frequency.png``, the binned diagnostics of
:mod:`experiments.analysis.granularity` per granularity, with the element granularity's
reference lines (``docs/algorithm.md``, Sec. 10)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from experiments.analysis.granularity import BinnedTrace, GranularityTrace
from experiments.analysis.granularity_probe import GRANULARITIES

COLORS = {"model": "tab:blue", "layer": "tab:orange", "slice": "tab:green", "element": "tab:red"}


def _subtitle(trace: GranularityTrace) -> str:
    return (
        f"{trace.dataset}, test env(s) {list(trace.test_envs)}, "
        f"N = {trace.num_domains} training domains, driver: {trace.driver}"
    )


def _bin_axis(binned: BinnedTrace) -> tuple[np.ndarray, list[str]]:
    """The centre and the label of every bin."""
    centers = np.array([(a + b - 1) / 2 for a, b in binned.edges])
    return centers, [f"{a}-{b - 1}" for a, b in binned.edges]


def plot_ratio(trace: GranularityTrace, binned: BinnedTrace, output_dir: Path) -> Path:
    """Writes ``fig6_modification_ratio.png``: the modification ratio per bin."""
    from matplotlib.figure import Figure

    centers, labels = _bin_axis(binned)
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    ax = figure.subplots()
    for g in GRANULARITIES:
        ax.plot(centers, binned.ratio[g], "o-", color=COLORS[g], label=g)
    ax.set_xticks(centers, labels, rotation=30, fontsize=8)
    ax.set_xlabel("iterations (10 bins)")
    ax.set_ylabel("modification ratio ||removed|| / ||g||")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Figure 6: modification ratio by granularity\n{_subtitle(trace)}", fontsize=10)
    ax.legend()
    path = output_dir / "fig6_modification_ratio.png"
    figure.savefig(path, dpi=110)
    return path


def plot_frequency(
    trace: GranularityTrace,
    binned: BinnedTrace,
    reference: Mapping[int, Mapping[str, float]],
    output_dir: Path,
) -> Path:
    """Writes ``fig7_modification_frequency.png``: the modification frequency per bin,
    the element shares, ``1/2^(N-1)``, ``1/(2N-1)`` and the element probe on random
    gradients (``reference``, of :func:`~experiments.analysis.granularity_probe.
    random_reference`)."""
    from matplotlib.figure import Figure

    centers, labels = _bin_axis(binned)
    count = trace.num_domains
    figure = Figure(figsize=(12, 5), layout="constrained")
    ax = figure.subplots()
    for g in GRANULARITIES:
        ax.plot(centers, binned.frequency[g], "o-", color=COLORS[g],
                label=f"{g}: modification frequency (probe)")
    ax.plot(centers, binned.pairwise_original, "^--", color="tab:brown",
            label="element: share of pairwise tests negative on the original gradients")
    ax.plot(centers, binned.all_signs_agree, "s--", color="tab:purple",
            label="element: share with all N signs agreeing (official change_rate)")
    ax.axhline(1 / 2 ** (count - 1), color="tab:purple", lw=0.8, ls=":",
               label=f"1/2^(N-1) = {1 / 2 ** (count - 1):.4f}")
    ax.axhline(1 / (2 * count - 1), color="grey", lw=0.8, ls="-.",
               label=f"1/(2N-1) = {1 / (2 * count - 1):.4f} (as printed in the paper)")
    if count in reference:
        ax.axhline(reference[count]["frequency"], color="tab:red", lw=0.8, ls=":",
                   label=f"element probe on random gradients = "
                   f"{reference[count]['frequency']:.3f}")
    ax.set_xticks(centers, labels, rotation=30, fontsize=8)
    ax.set_xlabel("iterations (10 bins)")
    ax.set_ylabel("modification frequency")
    highest = max(
        *(float(np.nanmax(binned.frequency[g])) for g in GRANULARITIES),
        float(np.nanmax(binned.pairwise_original)),
        float(np.nanmax(binned.all_signs_agree)),
    )
    ax.set_ylim(0, min(1.0, 1.15 * highest + 0.02))
    ax.set_title(f"Figure 7: modification frequency by granularity\n{_subtitle(trace)}",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = output_dir / "fig7_modification_frequency.png"
    figure.savefig(path, dpi=110)
    return path


def plot_granularities(
    trace: GranularityTrace,
    binned: BinnedTrace,
    reference: Mapping[int, Mapping[str, float]],
    output_dir: Path,
) -> list[Path]:
    """Writes ``fig6_modification_ratio.png`` and ``fig7_modification_frequency.png``."""
    return [
        plot_ratio(trace, binned, output_dir),
        plot_frequency(trace, binned, reference, output_dir),
    ]
