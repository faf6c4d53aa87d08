"""How the REPORT writes numbers: ``n/a`` for what is undefined, ``X`` for no run."""

from __future__ import annotations

import math

import numpy as np


def plus_minus(values: np.ndarray) -> str:
    """``mean ± std`` in one decimal (population std, as in
    :mod:`experiments.collect_results`); ``X`` when there are none."""
    if len(values) == 0:
        return "X"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``n/a``."""
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def signed(value: float, digits: int = 1) -> str:
    """``value`` with its sign and ``digits`` decimals, or ``n/a``."""
    return "n/a" if not math.isfinite(value) else f"{value:+.{digits}f}"
