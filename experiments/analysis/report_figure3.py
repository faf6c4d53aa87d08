"""The REPORT's section on Figure 3 (eq. 9 and 10 against Monte Carlo), in markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence

from experiments.analysis.angles import AngleResult
from experiments.analysis.verdicts import angle_findings

METHOD = (
    "Eq. (9), `p_n(θ) = Γ(n/2) / (Γ((n-1)/2) √π) · sin^(n-2) θ`, evaluated in log space; "
    "its mass and eq. (10), `Var_n = ∫ (θ - π/2)² p_n(θ) dθ`, by adaptive quadrature; "
    "the Monte Carlo angles between a fixed unit vector and whole Gaussian vectors of "
    "R^n (uniform directions), compared with the CDF of eq. (9) (numerically "
    "integrated) by a Kolmogorov-Smirnov test."
)


def _table(results: Sequence[AngleResult]) -> list[str]:
    lines = [
        "| n | ∫p_n − 1 | Var_n, eq. (10) | n · Var_n | Monte Carlo Var (± s.e.) | "
        "samples | KS D | KS p |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.n:,} | {r.mass - 1:.1e} | {r.variance:.4g} | {r.n * r.variance:.4f} | "
            f"{r.mc_variance:.4g} ± {r.mc_variance_se:.2g} | {r.num_samples:,} | "
            f"{r.ks_statistic:.4f} | {r.ks_pvalue:.3f} |"
        )
    return lines


def figure3_section(results: Sequence[AngleResult]) -> tuple[list[str], list[str]]:
    """Markdown of Figure 3, and its one-line finding."""
    found = angle_findings(results)
    largest = results[-1]
    lines = [
        "## 1. Figure 3: the angle between a fixed and a uniformly random vector",
        "",
        "![densities](fig3_angle_density.png)",
        "",
        "![variance](fig3_angle_variance.png)",
        "",
        METHOD,
        "",
        *_table(results),
        "",
        f"- The density of eq. (9) integrates to 1 within {found.worst_mass_error:.1e} for "
        "every n.",
        f"- Monte Carlo agrees with eq. (9): the smallest KS p-value over the "
        f"{len(results)} dimensions is {found.min_ks_pvalue:.3f}; the Monte Carlo variances "
        f"lie within {found.worst_variance_z:.1f} standard errors of eq. (10).",
        f"- Eq. (10) {'shrinks strictly' if found.shrinking else 'does NOT shrink strictly'} "
        f"as n grows, from {results[0].variance:.3f} (n = {results[0].n}) to "
        f"{largest.variance:.2e} (n = {largest.n:,}); n · Var_n = "
        f"{largest.n * largest.variance:.4f} at n = {largest.n:,}, i.e. Var_n ≈ 1/n: the "
        f"typical angle deviates from 90° by about "
        f"{math.degrees(math.sqrt(largest.variance)):.2f}° at n = {largest.n:,}.",
    ]
    findings = [
        f"Figure 3: eq. (9) integrates to 1 (within {found.worst_mass_error:.0e}) and matches "
        f"Monte Carlo (min KS p = {found.min_ks_pvalue:.2f}); eq. (10) "
        f"{'shrinks' if found.shrinking else 'does not shrink'} with n, n · Var_n = "
        f"{largest.n * largest.variance:.3f} at n = {largest.n:,}.",
    ]
    return lines, findings
