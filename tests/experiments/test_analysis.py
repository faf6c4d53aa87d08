"""Tests of :mod:`experiments.analysis`: eq. (9)/(10) against closed forms and Monte Carlo,
the element statistics and the granularity probe against the library, the verdicts, the
flags, and every output of ``--quick``."""

from __future__ import annotations

import dataclasses
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
from experiments import run_dir
from experiments.analysis import (
    ablation,
    angles,
    granularity,
    granularity_probe,
    paper,
    report,
    settings,
    verdicts,
)
from experiments.sweep import SweepConfig
from experiments.training import TrainConfig

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
    ours = granularity_probe.element_statistics(grads)
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
    reference = granularity_probe.random_reference(params, [3, 5])
    for n, quote in paper.QUOTED_ELEMENT_START.items():
        assert reference[n]["all_agree"] == pytest.approx(quote, abs=0.01)  # 1/2^(N-1)
        assert reference[n]["pairwise_original"] == pytest.approx(0.5, abs=0.01)
        assert reference[n]["frequency"] == pytest.approx((1 - quote) / (n - 1), abs=0.01)
    best, deviations = verdicts.paper_plotted(reference)
    assert best is verdicts.ElementQuantity.ALL_SIGNS_AGREE
    assert best.label == "share with all N signs agreeing"
    assert deviations[verdicts.ElementQuantity.AS_PRINTED] == pytest.approx(1 / 4 - 1 / 5)


def _trace(steps: int) -> granularity.GranularityTrace:
    rng = np.random.default_rng(0)
    frequency = {g: rng.uniform(0, 1, steps) for g in granularity_probe.GRANULARITIES}
    frequency["model"][: steps // 2] = 0.0  # no conflict: the ratio must not count
    ratio = {
        g: rng.uniform(0, 1, steps) * (frequency[g] > 0) for g in granularity_probe.GRANULARITIES
    }
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
    Verdict = verdicts.Verdict
    assert verdicts.verdict(True, 6, 10) is Verdict.HOLDS
    assert verdicts.verdict(False, 2, 10) is Verdict.DOES_NOT_HOLD
    assert verdicts.verdict(True, 2, 10) is Verdict.MIXED
    assert verdicts.verdict(False, 9, 10) is Verdict.MIXED


# ----------------------------------------------------------------------------------------
# Table 2 and the whole command.


def test_ablation_steps_are_paired_differences() -> None:
    sweep = SweepConfig(
        output_dir="unused",
        datasets=("RotatedMNIST",),
        algorithms=ablation.ABLATION,
        test_env_choices=(0, 5),
        single_test_envs=True,
        n_trials=3,
        run=TrainConfig(steps=1, checkpoint_freq=1, hparams={"batch_size": 1}),
    )
    accuracies = {}
    for index, algorithm in enumerate(ablation.ABLATION):
        for trial in range(3):
            for env in (0, 5):
                accuracies[("RotatedMNIST", algorithm, env, trial)] = (
                    0.5 + 0.01 * index + (0.1 * trial if env == 0 else 0.0)
                )
    result = ablation.AblationResult(
        sweeps=(sweep,),
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


def test_table2_rows_are_labelled_from_the_registry() -> None:
    assert [ablation.paper_label(a) for a in ablation.ABLATION] == [
        "ERM", "PCGrad", "L", "L+S", "L+S+D"
    ]
    assert ablation.label("erm") == "ERM"
    assert ablation.label("corgrad_no_smoothing") == "L+S (corgrad_no_smoothing)"
    assert ablation.label("corgrad") == "L+S+D (corgrad)"
    assert set(paper.TABLE2) == set(ablation.ABLATION)


@pytest.mark.slow
def test_quick_run_writes_every_output(tmp_path: Path) -> None:
    output = tmp_path / "analysis"
    # A run directory left by an earlier (killed) analysis is redone from step 0.
    stale = output / settings.GRANULARITY_RUN
    stale.mkdir(parents=True)
    (stale / run_dir.ARGS).write_text("{}", encoding="utf-8")
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
    assert "SPEC" not in text and "docs/algorithm.md" in text
    numbers = json.loads((output / report.NUMBERS).read_text(encoding="utf-8"))
    assert {r["n"] for r in numbers["figure3"]} == set(settings.QUICK.angle_dimensions)
    assert len(numbers["figures6_7"]["bins"]) == 10
    assert numbers["figures6_7"]["steps"] == settings.QUICK.granularity_steps
    assert (stale / run_dir.DONE).exists()
    assert len(numbers["table2"]["accuracies"]) == 5 * settings.QUICK.table2_trials
    runs = list((output / "table2").rglob("done"))
    assert len(runs) == 5 * settings.QUICK.table2_trials


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_bad_flags_exit_with_code_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = ["--output_dir", str(tmp_path / "out")]
    assert report.main(["--quick", *output, "--table2_datasets", "PACS"]) == 2
    assert "embedded datasets" in _one_line(capsys)
    assert report.main(["--quick", *output, "--granularity_driver", "sgd"]) == 2
    err = _one_line(capsys)
    assert "--granularity_" in err and "unknown algorithm 'sgd'" in err
    assert report.main(["--quick", *output, "--table2_test_envs", "9"]) == 2
    assert "test env 9 is out of range" in _one_line(capsys)
    assert report.main(["--quick", *output, "--table2_steps", "0"]) == 2
    err = _one_line(capsys)
    assert "Table 2" in err and "steps must be at least 1, got 0" in err
    assert report.main(["--quick", *output, "--table2_max_eval_examples", "-3"]) == 2
    assert "max_eval_examples must be at least 1" in _one_line(capsys)
    assert report.main(["--quick", *output, "--granularity_batch_size", "0"]) == 2
    assert "hparam batch_size: 0" in _one_line(capsys)
    assert report.main(["--quick", *output, "--angle_max_samples", "0"]) == 2
    assert "--angle_max_samples must be at least 1" in _one_line(capsys)
    assert not (tmp_path / "out").exists()  # checked before any work


@pytest.mark.parametrize(
    "argv", [["--table2_steps", "many"], ["--table2_max_eval_examples", "most"], ["--nope"]]
)
def test_a_flag_that_does_not_parse_exits_with_code_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--quick", *argv])
    assert exit_info.value.code == 2
    assert _one_line(capsys).startswith("python -m experiments.analysis: error: ")


def _settings(argv: list[str]) -> settings.AnalysisSettings:
    return settings.settings_from_args(settings.build_parser().parse_args(argv))


def test_max_eval_examples_means_what_train_means(capsys: pytest.CaptureFixture[str]) -> None:
    assert _settings([]).table2_max_eval_examples == 300
    assert _settings(["--quick"]).table2_max_eval_examples == 16
    assert _settings(["--table2_max_eval_examples", "5"]).table2_max_eval_examples == 5
    every = _settings(["--table2_max_eval_examples", "all"])
    assert every.table2_max_eval_examples is None
    assert capsys.readouterr().err == ""
    (sweep,) = settings.table2_sweeps(every, Path("out"))
    assert sweep.run.max_eval_examples is None  # train's "all"


def test_max_eval_examples_0_is_deprecated_and_means_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    deprecated = _settings(["--quick", "--table2_max_eval_examples", "0"])
    assert "--table2_max_eval_examples 0 is deprecated" in _one_line(capsys)
    assert deprecated == dataclasses.replace(settings.QUICK, table2_max_eval_examples=None)
    settings.check(deprecated, Path("out"))  # valid: every example


def test_flags_replace_the_presets_and_compose_the_trainers_configs() -> None:
    chosen = _settings([
        "--quick", "--seed", "3", "--granularity_test_envs", "1", "2",
        "--table2_datasets", "RotatedMNIST", "ColoredMNIST", "--table2_trials", "1",
    ])
    assert chosen == dataclasses.replace(
        settings.QUICK, seed=3, granularity_test_envs=(1, 2),
        table2_datasets=("RotatedMNIST", "ColoredMNIST"), table2_trials=1,
    )
    run = settings.granularity_run(chosen, Path("out"))
    assert (run.test_envs, run.seed, run.trial_seed, run.holdout_fraction) == ((1, 2), 3, 0, 0.2)
    assert run.steps == run.checkpoint_freq == settings.QUICK.granularity_steps
    assert run.hparams == {"batch_size": settings.QUICK.granularity_batch_size}
    assert run.output_dir == str(Path("out") / settings.GRANULARITY_RUN)
    sweeps = settings.table2_sweeps(chosen, Path("out"))
    assert [s.datasets for s in sweeps] == [("RotatedMNIST",), ("ColoredMNIST",)]
    assert all(s.test_env_choices == (0,) and s.single_test_envs for s in sweeps)
    defaults = settings.table2_sweeps(settings.DEFAULT, Path("out"))
    assert defaults[0].test_env_choices == (0, 5)
    assert defaults[0].run.max_eval_examples == 300
    settings.check(chosen, Path("out"))


def test_the_granularity_probe_reports_the_librarys_diagnostics() -> None:
    grads = _stacked(4, seed=7)
    probe = granularity_probe.GranularityProbe(num_slices=2, seed=5)
    state, metrics = jax.jit(probe)(grads, PARAMS, probe.init(PARAMS))
    tree_get = optax.tree_utils.tree_get
    for g in granularity_probe.COARSE_GRANULARITIES:
        library = corgrad_jax.corgrad(2, alpha=None, granularity=g, seed=5)
        _, expected = library.update(grads, library.init(PARAMS), PARAMS)
        for quantity in granularity_probe.QUANTITIES:
            assert float(metrics[f"{g}/{quantity}"]) == pytest.approx(
                float(tree_get(expected, quantity)), abs=1e-6
            ), (g, quantity)
    element = granularity_probe.element_statistics(grads)
    for key, name in [("modification_frequency", "frequency"), ("modification_ratio", "ratio"),
                      ("pairwise_original", "pairwise_original"), ("all_agree", "all_agree")]:
        assert float(metrics[f"element/{key}"]) == pytest.approx(float(element[name]), abs=1e-7)
    assert set(state) == set(granularity_probe.COARSE_GRANULARITIES)
    assert hash(probe) == hash(granularity_probe.GranularityProbe(num_slices=2, seed=5))
