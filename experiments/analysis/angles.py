"""Figure 3: the angle between a fixed vector and a uniformly random one in R^n.

The paper (Sec. 3.2) argues that high-dimensional gradients are nearly orthogonal, so a
coarse conflict test (one angle for the whole model) rarely fires. Its equation (9)
gives the density of the angle ``theta`` between a fixed vector and a vector drawn
uniformly on the sphere of R^n:

.. math::  p_n(\\theta) = \\frac{\\Gamma(n/2)}{\\Gamma((n-1)/2)\\sqrt{\\pi}}
           \\sin^{n-2}\\theta, \\qquad \\theta \\in [0, \\pi],

and its equation (10) the spread around ``pi/2``,
``Var_n = int (theta - pi/2)^2 p_n(theta) dtheta``, which shrinks like ``1/n``.

Everything here is NumPy/SciPy: the density (in log space, so that n = 10^5 does not
overflow), its numerical integrals (mass, variance, CDF), and a Monte Carlo sampler of
the angle that draws whole Gaussian vectors in R^n (their directions are uniform).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import integrate, stats

HALF_PI = math.pi / 2

# Beyond this many (large-n) standard deviations 1/sqrt(n - 2) from pi/2 the density is
# below exp(-WINDOW^2 / 2) ~ 1e-31 of its peak: the integrals ignore that tail.
_WINDOW = 12.0


def log_normalizer(n: int) -> float:
    """``log(Gamma(n/2) / (Gamma((n-1)/2) sqrt(pi)))``, the constant of eq. (9)."""
    _check_dimension(n)
    return math.lgamma(n / 2) - math.lgamma((n - 1) / 2) - 0.5 * math.log(math.pi)


def angle_density(theta: np.ndarray | float, n: int) -> np.ndarray:
    """Eq. (9): the density of the angle between a fixed and a uniform random vector.

    Args:
      theta: angles in ``[0, pi]`` (radians).
      n: the dimension, at least 2.

    Returns:
      ``p_n(theta)``, computed as ``exp(log C_n + (n - 2) log sin theta)``.
    """
    theta = np.asarray(theta, np.float64)
    sine = np.clip(np.sin(theta), 0.0, None)
    if n == 2:
        return np.full_like(theta, 1 / math.pi)
    with np.errstate(divide="ignore"):
        return np.exp(log_normalizer(n) + (n - 2) * np.log(sine))


def _half_window(n: int) -> float:
    """Half-width around pi/2 outside which p_n is negligible (all of [0, pi/2] for small n)."""
    return HALF_PI if n <= 2 else min(HALF_PI, _WINDOW / math.sqrt(n - 2))


def _integral_about_half_pi(weight: str, n: int) -> float:
    """``int_0^pi w(theta - pi/2) p_n(theta) dtheta`` for ``w`` = 1 or ``phi^2``.

    Uses the symmetry ``p_n(pi/2 + phi) = p_n(pi/2 - phi) = C_n cos^(n-2) phi``.
    """
    log_c = log_normalizer(n)

    def integrand(phi: float) -> float:
        cosine = math.cos(phi)
        value = math.exp(log_c + (n - 2) * math.log(cosine)) if cosine > 0 else 0.0
        return value * (phi * phi if weight == "phi2" else 1.0)

    value, _ = integrate.quad(integrand, 0.0, _half_window(n), epsabs=0.0, epsrel=1e-11, limit=400)
    return 2.0 * value


def angle_mass(n: int) -> float:
    """``int_0^pi p_n(theta) dtheta``, computed numerically: 1 if eq. (9) is a density."""
    return _integral_about_half_pi("one", n)


def angle_variance(n: int) -> float:
    """Eq. (10): ``int_0^pi (theta - pi/2)^2 p_n(theta) dtheta``, by numerical quadrature.

    For n = 2 (uniform angle) it is ``pi^2 / 12``; for large n it approaches ``1 / n``.
    """
    return _integral_about_half_pi("phi2", n)


def angle_cdf(theta: np.ndarray | float, n: int, *, grid_points: int = 20001) -> np.ndarray:
    """``P(Theta <= theta)``: eq. (9) integrated numerically (trapezoid on a fine grid).

    No closed form is used, so comparing this with Monte Carlo tests eq. (9) itself.
    (The closed form, a regularized incomplete beta function of ``(1 - cos theta)/2``,
    serves as an independent check in the tests.)
    """
    half = _half_window(n)
    grid = np.linspace(HALF_PI - half, HALF_PI + half, grid_points)
    cumulative = integrate.cumulative_trapezoid(angle_density(grid, n), grid, initial=0.0)
    return np.interp(
        np.asarray(theta, np.float64), grid, cumulative, left=0.0, right=cumulative[-1]
    )


def sample_angles(
    n: int, num_samples: int, rng: np.random.Generator, *, chunk_floats: int = 1 << 23
) -> np.ndarray:
    """Monte Carlo: angles between a fixed unit vector and ``num_samples`` random vectors.

    The fixed vector is itself drawn once (any fixed vector will do); each random vector
    is a standard Gaussian in R^n, whose direction is uniform on the sphere. Vectors are
    drawn in chunks of about ``chunk_floats`` numbers, so n = 10^5 fits in memory.
    """
    _check_dimension(n)
    fixed = rng.standard_normal(n)
    fixed /= np.linalg.norm(fixed)
    fixed32 = fixed.astype(np.float32)
    rows = max(1, chunk_floats // n)
    cosines = []
    for start in range(0, num_samples, rows):
        count = min(rows, num_samples - start)
        vectors = rng.standard_normal((count, n), dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        cosines.append((vectors @ fixed32).astype(np.float64) / norms)
    return np.arccos(np.clip(np.concatenate(cosines), -1.0, 1.0))


@dataclasses.dataclass(frozen=True)
class AngleResult:
    """The numbers behind Figure 3 for one dimension n.

    Attributes:
      n: the dimension.
      mass: numerical integral of eq. (9) over ``[0, pi]`` (should be 1).
      variance: eq. (10), by quadrature.
      mc_variance: ``mean((theta - pi/2)^2)`` over the Monte Carlo samples.
      mc_variance_se: the standard error of ``mc_variance``.
      ks_statistic, ks_pvalue: Kolmogorov-Smirnov test of the samples against the CDF
        of eq. (9) (:func:`angle_cdf`).
      num_samples: Monte Carlo sample size.
      samples: the Monte Carlo angles (kept for the histograms, not for the JSON).
    """

    n: int
    mass: float
    variance: float
    mc_variance: float
    mc_variance_se: float
    ks_statistic: float
    ks_pvalue: float
    num_samples: int
    samples: np.ndarray = dataclasses.field(repr=False, compare=False)

    def summary(self) -> dict[str, float | int]:
        """The scalar fields, for JSON."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "samples"
        }


def analyze_angles(
    dimensions: Sequence[int], *, max_samples: int, max_floats: float, seed: int = 0
) -> list[AngleResult]:
    """Eq. (9) and (10) against Monte Carlo for every n in ``dimensions``.

    Args:
      dimensions: the n to examine (each at least 2).
      max_samples: Monte Carlo samples per n.
      max_floats: cap on ``n * samples`` (the cost of a dimension): large n get
        ``max_floats // n`` samples (at least 200).
      seed: seeds the Monte Carlo draws (each n its own stream).
    """
    results = []
    for n in dimensions:
        rng = np.random.default_rng([seed, n])
        num_samples = int(max(200, min(max_samples, max_floats // n)))
        samples = sample_angles(n, num_samples, rng)
        squared = (samples - HALF_PI) ** 2
        ks = stats.kstest(samples, lambda x, n=n: angle_cdf(x, n))
        results.append(
            AngleResult(
                n=int(n),
                mass=angle_mass(n),
                variance=angle_variance(n),
                mc_variance=float(squared.mean()),
                mc_variance_se=float(squared.std(ddof=1) / math.sqrt(num_samples)),
                ks_statistic=float(ks.statistic),
                ks_pvalue=float(ks.pvalue),
                num_samples=num_samples,
                samples=samples,
            )
        )
    return results


def plot_densities(results: Sequence[AngleResult], output_dir: Path) -> Path:
    """Writes ``fig3_angle_density.png``: histograms against eq. (9), one panel per n."""
    from matplotlib.figure import Figure

    columns = min(3, len(results))
    rows = math.ceil(len(results) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, result in zip(axes, results, strict=False):
        spread = 5 * math.sqrt(result.variance)
        low, high = max(0.0, HALF_PI - spread), min(math.pi, HALF_PI + spread)
        ax.hist(
            result.samples,
            bins=40,
            range=(low, high),
            density=True,
            color="tab:blue",
            alpha=0.45,
            label=f"Monte Carlo ({result.num_samples:,})",
        )
        grid = np.linspace(low, high, 400)
        ax.plot(grid, angle_density(grid, result.n), color="tab:red", lw=1.5, label="eq. (9)")
        ax.set_title(f"n = {result.n:,}  (KS D = {result.ks_statistic:.3f})", fontsize=10)
        ax.set_xlabel(r"angle $\theta$ (rad)")
    for ax in axes[len(results) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    figure.suptitle(
        "Figure 3: angle between a fixed and a uniformly random vector in "
        r"$\mathbb{R}^n$"
    )
    path = output_dir / "fig3_angle_density.png"
    figure.savefig(path, dpi=110)
    return path


def plot_variances(results: Sequence[AngleResult], output_dir: Path) -> Path:
    """Writes ``fig3_angle_variance.png``: the densities on [0, pi], and eq. (10)
    shrinking with n against Monte Carlo."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    grid = np.linspace(0, math.pi, 2001)
    for result in results:
        if result.n <= 1000:
            left.plot(grid, angle_density(grid, result.n), label=f"n = {result.n:,}")
    left.axvline(HALF_PI, color="grey", lw=0.8, ls=":")
    left.set_xlabel(r"angle $\theta$ (rad)")
    left.set_ylabel(r"density $p_n(\theta)$, eq. (9)")
    left.set_title("Densities concentrate at $\\pi/2$")
    left.legend(fontsize=8)
    ns = np.array([r.n for r in results], float)
    right.loglog(
        ns, [r.variance for r in results], "o-", color="tab:red", label="eq. (10), quadrature"
    )
    right.errorbar(
        ns,
        [r.mc_variance for r in results],
        yerr=[2 * r.mc_variance_se for r in results],
        fmt="s",
        mfc="none",
        color="tab:blue",
        label="Monte Carlo (±2 s.e.)",
    )
    right.loglog(ns, 1 / ns, "--", color="grey", label="1/n")
    right.set_xlabel("dimension n")
    right.set_ylabel(r"Var$_n$ = E[($\theta - \pi/2)^2$]")
    right.set_title("The spread around $\\pi/2$ shrinks with n")
    right.legend(fontsize=8)
    path = output_dir / "fig3_angle_variance.png"
    figure.savefig(path, dpi=110)
    return path


def plot_angles(results: Sequence[AngleResult], output_dir: Path) -> list[Path]:
    """Writes ``fig3_angle_density.png`` (histograms against eq. (9), one panel per n)
    and ``fig3_angle_variance.png`` (densities on [0, pi]; eq. (10) shrinking with n)."""
    return [plot_densities(results, output_dir), plot_variances(results, output_dir)]


def _check_dimension(n: int) -> None:
    if int(n) != n or n < 2:
        raise ValueError(f"the dimension n must be an integer >= 2, got {n!r}")
