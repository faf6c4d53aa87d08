"""Tests of :mod:`experiments.analysis`: eq. (9)/(10) against closed forms and Monte Carlo,
the element statistics against the library, and every output of ``--quick``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

import corgrad_jax
from experiments.analysis import ablation, angles, granularity, report

DIMENSIONS = [2, 3, 4, 10, 1_000, 100_000]


# ----------------------------------------------------------------------------------------
# Figure 3.


@pytest.mark.parametrize("n", DIMENSIONS)
def test_the_density_of_eq9_integrates_to_one(n: int) -> None:
    assert angles.angle_mass(n) == pytest.approx(1.0, abs=1e-9)
    # Independently of the quadrature: a plain trapezoid over the bulk of the density.
    half = min(math.pi / 2, 20 / math.sqrt(n))
    grid = np.linspace(math.pi / 2 - half, math.pi / 2 + half, 200_001)
    assert np.trapezoid(angles.angle_density(grid, n), grid) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n", DIMENSIONS)
def test_the_cdf_of_eq9_is_the_regularized_incomplete_beta(n: int) -> None:
    # (1 - cos theta) / 2 ~ Beta((n-1)/2, (n-1)/2) for a uniform direction.
    spread = math.sqrt(angles.angle_variance(n))
    theta = np.clip(math.pi / 2 + spread * np.linspace(-4, 4, 17), 0, math.pi)
    expected = special.betainc((n - 1) / 2, (n - 1) / 2, (1 - np.cos(theta)) / 2)
    np.testing.assert_allclose(angles.angle_cdf(theta, n), expected, atol=1e-6)


def test_eq10_matches_closed_forms_and_shrinks_like_one_over_n() -> None:
    assert angles.angle_variance(2) == pytest.approx(math.pi**2 / 12, rel=1e-10)  # uniform
    assert angles.angle_variance(3) == pytest.approx(math.pi**2 / 4 - 2, rel=1e-10)
    variances = [angles.angle_variance(n) for n in DIMENSIONS]
    assert all(b < a for a, b in zip(variances, variances[1:], strict=False))
    assert 100_000 * variances[-1] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("n", [3, 50, 20_000])
def test_monte_carlo_angles_follow_eq9(n: int) -> None:
    (result,) = angles.analyze_angles([n], max_samples=20_000, max_floats=4e7, seed=1)
    assert result.ks_pvalue > 1e-3
    assert abs(result.mc_variance - result.variance) < 4 * result.mc_variance_se
    spread = math.sqrt(result.variance)
    counts, edges = np.histogram(
        result.samples, bins=20, range=(math.pi / 2 - 3 * spread, math.pi / 2 + 3 * spread)
    )
    observed = counts / len(result.samples)
    expected = np.diff(angles.angle_cdf(edges, n))
    # Binomial noise of each bin's share, 5 standard errors.
    tolerance = 5 * np.sqrt(expected * (1 - expected) / len(result.samples)) + 1e-4
    assert np.all(np.abs(observed - expected) < tolerance)


def test_bad_dimensions_are_refused() -> None:
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        angles.log_normalizer(1)


# ----------------------------------------------------------------------------------------
# Figures 6 and 7.

PARAMS = {
    "conv": {"kernel": jnp.zeros((3, 3, 2, 4)), "bias": jnp.zeros(4)},
    "dense": {"kernel": jnp.zeros((4, 3))},
}


def _stacked(num_domains: int, seed: int, zeros: bool = False) -> dict:
    leaves, treedef = jax.tree_util.tree_flatten(PARAMS)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    grads = [
        jax.random.normal(k, (num_domains, *leaf.shape))
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    if zeros:  # exact zeros: they agree with nothing and conflict with nothing
        grads = [jnp.where(jnp.abs(g) < 0.3, 0.0, g) for g in grads]
    return jax.tree_util.tree_unflatten(treedef, grads)


@pytest.mark.parametrize("num_domains", [2, 3, 5])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_element_statistics_equal_the_library(num_domains: int, zeros: bool, shuffle: bool) -> None:
    grads = _stacked(num_domains, seed=num_domains, zeros=zeros)
    ours = granularity.element_statistics(grads)
    probe = corgrad_jax.corgrad(alpha=None, granularity="element", shuffle=shuffle, seed=3)
    _, state = probe.update(grads, probe.init(PARAMS), PARAMS)
    tree_get = optax.tree_utils.tree_get
    assert float(ours["frequency"]) == pytest.approx(
        float(tree_get(state, "modification_frequency")), abs=1e-7
    )
    assert float(ours["ratio"]) == pytest.approx(
        float(tree_get(state, "modification_ratio")), abs=1e-5
    )
    agreement = corgrad_jax.agreement_sum()
    _, state = agreement.update(grads, agreement.init(PARAMS), PARAMS)
    assert float(ours["all_agree"]) == pytest.approx(
        1 - float(tree_get(state, "modification_frequency")), abs=1e-7
    )
    # The pairwise share on the original gradients, by brute force.
    flat = np.concatenate(
        [np.asarray(g).reshape(num_domains, -1) for g in jax.tree_util.tree_leaves(grads)], axis=1
    )
    negative = [
        np.mean(flat[i] * flat[j] < 0)
        for i in range(num_domains)
        for j in range(num_domains)
        if i != j
    ]
    assert float(ours["pairwise_original"]) == pytest.approx(np.mean(negative), abs=1e-6)


def test_random_gradients_give_the_papers_quoted_element_start() -> None:
    params = {"w": jnp.zeros((200, 500))}
    reference = granularity.random_reference(params, [3, 5])
    for n, quote in report.PAPER_QUOTED_ELEMENT_START.items():
        assert reference[n]["all_agree"] == pytest.approx(quote, abs=0.01)  # 1/2^(N-1)
        assert reference[n]["pairwise_original"] == pytest.approx(0.5, abs=0.01)
        assert reference[n]["frequency"] == pytest.approx((1 - quote) / (n - 1), abs=0.01)
    best, _ = report._which_quantity_paper_plotted(reference)
    assert best == "share with all N signs agreeing"


def _trace(steps: int) -> granularity.GranularityTrace:
    rng = np.random.default_rng(0)
    frequency = {g: rng.uniform(0, 1, steps) for g in granularity.GRANULARITIES}
    frequency["model"][: steps // 2] = 0.0  # no conflict: the ratio must not count
    ratio = {g: rng.uniform(0, 1, steps) * (frequency[g] > 0) for g in granularity.GRANULARITIES}
    return granularity.GranularityTrace(
        dataset="RotatedMNIST",
        test_envs=(0,),
        driver="erm",
        num_domains=5,
        batch_size=4,
        num_slices=10,
        num_parameters=100,
        num_layers=2,
        loss=rng.uniform(0, 1, steps),
        frequency=frequency,
        ratio=ratio,
        pairwise_original=rng.uniform(0, 1, steps),
        all_signs_agree=rng.uniform(0, 1, steps),
        seconds=0.0,
    )


def test_bins_average_frequencies_and_weight_ratios_by_modified_tests() -> None:
    trace = _trace(95)
    binned = granularity.bin_trace(trace, 10)
    assert len(binned.edges) == 10 and binned.edges[0][0] == 0 and binned.edges[-1][1] == 95
    first, stop = binned.edges[0]
    assert binned.frequency["slice"][0] == pytest.approx(trace.frequency["slice"][:stop].mean())
    weights = trace.frequency["layer"][:stop]
    assert binned.ratio["layer"][0] == pytest.approx(
        np.sum(trace.ratio["layer"][:stop] * weights) / weights.sum()
    )
    assert np.isnan(binned.ratio["model"][0])  # nothing modified in the first bins
    assert len(granularity.bin_trace(_trace(4), 10).edges) == 4  # fewer steps than bins


def test_verdicts_need_the_overall_and_the_bins_to_agree() -> None:
    assert report._verdict(True, 6, 10) == "holds"
    assert report._verdict(False, 2, 10) == "does not hold"
    assert report._verdict(True, 2, 10) == "mixed"
    assert report._verdict(False, 9, 10) == "mixed"


# ----------------------------------------------------------------------------------------
# Table 2 and the whole command.


def test_ablation_steps_are_paired_differences() -> None:
    settings = ablation.AblationSettings(
        test_envs={"RotatedMNIST": (0, 5)},
        trials=3,
        steps=1,
        batch_size=1,
        checkpoint_freq=1,
        max_eval_examples=None,
    )
    accuracies = {}
    for index, algorithm in enumerate(ablation.ABLATION):
        for trial in range(3):
            for env in (0, 5):
                accuracies[("RotatedMNIST", algorithm, env, trial)] = (
                    0.5 + 0.01 * index + (0.1 * trial if env == 0 else 0.0)
                )
    result = ablation.AblationResult(
        settings=settings,
        table="",
        accuracies=accuracies,
        diagnostics={},
        num_domains={},
        reused_runs=0,
        total_runs=30,
        seconds=0.0,
    )
    np.testing.assert_allclose(result.trial_averages("erm"), [50, 55, 60])
    steps = ablation.ablation_steps(result)
    assert [s.mean for s in steps] == pytest.approx([1, 1, 1, 1, 4])
    assert all(s.std == pytest.approx(0, abs=1e-9) and s.same_direction for s in steps)
    assert steps[-1].paper == pytest.approx(3.0)


@pytest.mark.slow
def test_quick_run_writes_every_output(tmp_path: Path) -> None:
    output = tmp_path / "analysis"
    assert report.main(["--quick", "--output_dir", str(output)]) == 0
    for name in (
        "fig3_angle_density.png",
        "fig3_angle_variance.png",
        "fig6_modification_ratio.png",
        "fig7_modification_frequency.png",
        "table2_ablation.png",
    ):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = (output / report.REPORT).read_text(encoding="utf-8")
    for heading in ("## 1. Figure 3", "## 2. Figures 6 and 7", "## 3. Table 2", "## Timing"):
        assert heading in text
    assert "Wall time, end to end:" in text
    numbers = json.loads((output / report.NUMBERS).read_text(encoding="utf-8"))
    assert {r["n"] for r in numbers["figure3"]} == set(report.QUICK.angle_dimensions)
    assert len(numbers["figures6_7"]["bins"]) == 10
    assert len(numbers["table2"]["accuracies"]) == 5 * report.QUICK.ablation.trials
    runs = list((output / "table2").rglob("done"))
    assert len(runs) == 5 * report.QUICK.ablation.trials


def test_bad_flags_exit_with_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--quick", "--table2_datasets", "PACS"]) == 2
    assert "embedded datasets" in capsys.readouterr().err
    assert report.main(["--quick", "--granularity_driver", "sgd"]) == 2
    assert "unknown --granularity_driver" in capsys.readouterr().err
    assert report.main(["--quick", "--table2_test_envs", "9"]) == 2
