"""Tests of the algorithm registry (:mod:`experiments.algorithms`) and of how the trainer
builds its optimizers from it (:mod:`experiments.training.optimizer`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import corgrad_jax
from experiments.algorithms import ALGORITHMS, display_name, get_algorithm
from experiments.algorithms.torch_layout import in_torch_layout
from experiments.hparams_registry import default_hparams
from experiments.training.optimizer import (
    DIAGNOSTICS,
    build_algorithm,
    build_optimizer,
    diagnostics,
)

PARAMS = {
    "conv": {"kernel": jnp.ones((3, 3, 4, 20)), "bias": jnp.ones(20)},
    "dense": {"kernel": jnp.ones((20, 7)), "bias": jnp.ones(7)},
}


def _grads(num_domains: int = 3, seed: int = 0) -> dict:
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    return jax.tree.map(lambda p: jax.random.normal(next(keys), (num_domains, *p.shape)), PARAMS)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_updates_param_shapes_and_reports_diagnostics(algorithm: str) -> None:
    hparams = default_hparams(algorithm, "RotatedMNIST")
    tx = build_optimizer(algorithm, hparams, seed=0, total_steps=100, num_domains=3)
    updates, state = tx.update(_grads(), tx.init(PARAMS), PARAMS)
    chex_shapes = jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, PARAMS)
    assert chex_shapes
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    values = {k: float(v) for k, v in diagnostics(state).items()}
    assert set(values) == set(DIAGNOSTICS)
    if algorithm == "erm":
        assert values == dict.fromkeys(DIAGNOSTICS, 0.0)
    elif algorithm != "and_mask":
        assert values["modification_frequency"] > 0  # random gradients do conflict


def test_erm_is_the_mean_gradient_under_adam() -> None:
    grads = _grads()
    tx = build_optimizer(
        "erm", default_hparams("erm", "RotatedMNIST"), seed=0, total_steps=10, num_domains=3)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    reference = optax.adam(1e-3)
    mean = jax.tree.map(lambda g: g.mean(0), grads)
    expected, _ = reference.update(mean, reference.init(PARAMS), PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), updates, expected)


@pytest.mark.parametrize(
    "algorithm", ["pcgrad", "agr_rand", "corgrad", "corgrad_layer", "grad_vac", "grad_drop"])
def test_the_seed_only_enters_through_the_initial_state(algorithm: str) -> None:
    # experiments.train compiles the step once per algorithm with seed 0 and gives each
    # run its seed through the optimizer state; this holds iff update ignores the seed.
    hparams = default_hparams(algorithm, "RotatedMNIST")
    seeded = build_algorithm(algorithm, hparams, seed=7, total_steps=100, num_domains=3)
    other = build_algorithm(algorithm, hparams, seed=0, total_steps=100, num_domains=3)
    state = seeded.init(PARAMS)
    for step in range(3):
        grads = _grads(seed=step)
        expected, expected_state = seeded.update(grads, state, PARAMS)
        actual, actual_state = other.update(grads, state, PARAMS)
        jax.tree.map(np.testing.assert_array_equal, actual, expected)
        state = expected_state
    # ... and the seed matters: another initial state gives other domain orders.
    if algorithm in ("agr_rand", "corgrad", "grad_drop"):  # random: the seed matters
        grads = _grads(num_domains=4)
        results = [
            tx.update(grads, tx.init(PARAMS), PARAMS)[0]
            for tx in (
                build_algorithm(algorithm, hparams, seed=s, total_steps=100, num_domains=4)
                for s in range(3)
            )
        ]
        assert any(
            not np.array_equal(results[0]["conv"]["kernel"], r["conv"]["kernel"])
            for r in results[1:]
        )


def test_corgrad_decays_alpha_over_the_run_and_official_keeps_it() -> None:
    hparams = default_hparams("corgrad", "RotatedMNIST")
    assert hparams["alpha_schedule"] == "log_decay"
    tx = build_algorithm("corgrad", hparams, seed=0, total_steps=10, num_domains=4)
    constant = build_algorithm(
        "corgrad", {**hparams, "alpha_schedule": "constant"}, seed=0, total_steps=10,
        num_domains=4,
    )
    state = tx.init(PARAMS)._replace(count=jnp.asarray(9))  # the last step: alpha = 0
    grads = jax.tree.map(lambda g: g.at[0].multiply(10.0), _grads(num_domains=4))  # dominant
    decayed, _ = tx.update(grads, state, PARAMS)
    kept, _ = constant.update(grads, state, PARAMS)
    fully_smoothed = build_algorithm(
        "corgrad", {**hparams, "alpha": 0.0, "alpha_schedule": "constant"}, seed=0,
        total_steps=10, num_domains=4,
    ).update(grads, state, PARAMS)[0]
    jax.tree.map(np.testing.assert_array_equal, decayed, fully_smoothed)
    assert not np.array_equal(decayed["conv"]["kernel"], kept["conv"]["kernel"])


def test_in_torch_layout_slices_kernels_like_pytorch() -> None:
    inner = corgrad_jax.corgrad(10, 0.6, variant="official")
    grads = _grads()
    actual, _ = in_torch_layout(inner).update(grads, inner.init(PARAMS), PARAMS)
    torch_grads = {
        "conv": {
            "kernel": grads["conv"]["kernel"].transpose(0, 4, 3, 1, 2),
            "bias": grads["conv"]["bias"],
        },
        "dense": {
            "kernel": grads["dense"]["kernel"].transpose(0, 2, 1),
            "bias": grads["dense"]["bias"],
        },
    }
    expected, _ = inner.update(torch_grads, inner.init(None))
    np.testing.assert_allclose(
        actual["conv"]["kernel"], expected["conv"]["kernel"].transpose(2, 3, 1, 0), rtol=1e-6
    )
    np.testing.assert_allclose(actual["dense"]["kernel"], expected["dense"]["kernel"].T, rtol=1e-6)
    flax_layout, _ = inner.update(grads, inner.init(PARAMS), PARAMS)
    assert not np.allclose(flax_layout["conv"]["kernel"], actual["conv"]["kernel"])


def test_unknown_algorithm_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'sgd'"):
        build_algorithm("sgd", {}, seed=0, total_steps=10, num_domains=3)


def test_the_registry_names_every_algorithm_once_without_importing_jax() -> None:
    import subprocess
    import sys

    script = ("import sys; import experiments.algorithms as a; "
              "print(len(a.ALGORITHMS), 'jax' in sys.modules, a.display_name('corgrad'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == [str(len(ALGORITHMS)), "False", "CorGrad"]
    assert display_name("ERM") == "ERM"  # a DomainBed name is shown as it is
    labels = [get_algorithm(name).paper_label for name in ALGORITHMS]
    assert [label for label in labels if label] == ["ERM", "PCGrad", "L+S+D", "L", "L+S"]
