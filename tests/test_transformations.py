"""A shared harness for every aggregator (optax-style): jit, chaining, inject_hyperparams,
dtypes, state stability, diagnostics, bad input and numerical edge cases."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import corgrad_jax as cg

FACTORIES = {
    "corgrad": lambda: cg.corgrad(),
    "corgrad_official": lambda: cg.corgrad(variant="official"),
    "corgrad_element": lambda: cg.corgrad(granularity="element"),
    "corgrad_model": lambda: cg.corgrad(granularity="model"),
    "pcgrad": lambda: cg.pcgrad(),
    "agreement_sum": cg.agreement_sum,
    "agreement_rand": lambda: cg.agreement_rand(seed=1),
    "and_mask": lambda: cg.and_mask(0.5),
    "mean_gradients": cg.mean_gradients,
    "upgrad_slice": lambda: cg.upgrad(granularity="slice", num_slices=3),
    "dual_proj_layer": lambda: cg.dual_proj(granularity="layer"),
    "mgda_element": lambda: cg.mgda(granularity="element"),
    "cagrad_slice": lambda: cg.cagrad(0.5, granularity="slice", num_slices=3),
    "imtl_g_layer": lambda: cg.imtl_g(granularity="layer"),
    "aligned_mtl_slice": lambda: cg.aligned_mtl(granularity="slice", num_slices=3),
    "con_fig_element": lambda: cg.con_fig(granularity="element"),
    "grad_vac_layer": lambda: cg.grad_vac(3, granularity="layer"),
    "nash_mtl_slice": lambda: cg.nash_mtl(3, granularity="slice", num_slices=3),
    "upgrad_model": cg.upgrad,
    "grad_drop": lambda: cg.grad_drop(0.1, seed=2),
    "sand_mask": lambda: cg.sand_mask(0.5),
}


@functools.cache
def transformation(name: str) -> optax.GradientTransformation:
    """``FACTORIES[name]()``, made once: a transformation is pure, so the tests share it,
    and jax.jit compiles its update once per input signature in a test process."""
    return FACTORIES[name]()


PARAMS = {"conv": {"kernel": jnp.zeros((3, 3, 2, 4))}, "bias": jnp.zeros(4),
          "scale": jnp.zeros(())}


def stacked_grads(num_domains=3, dtype=jnp.float32, seed=0):
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 8))
    return jax.tree.map(
        lambda p: jax.random.normal(next(keys), (num_domains, *p.shape), dtype), PARAMS)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_jit_and_eager_agree_and_state_is_stable(name):
    tx = transformation(name)
    grads = stacked_grads()
    state = tx.init(PARAMS)
    eager, eager_state = tx.update(grads, state, PARAMS)
    jitted, jit_state = jax.jit(tx.update)(grads, state, PARAMS)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal_shapes_and_dtypes(eager, PARAMS)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, jit_state)
    for field in ("modification_frequency", "modification_ratio", "dominant_fraction"):
        value = float(optax.tree_utils.tree_get(jit_state, field))
        assert 0.0 <= value <= 1.0 or field == "modification_ratio" and value >= 0


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_output_dtype_is_preserved(name, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        grads = stacked_grads(dtype=dtype)
        tx = transformation(name)
        out, _ = jax.jit(tx.update)(grads, tx.init(PARAMS))
        for leaf in jax.tree.leaves(out):
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))


@pytest.mark.parametrize("optimizer", [optax.adam(1e-2), optax.adamw(1e-2), optax.sgd(0.1)])
def test_chains_with_optimizers(optimizer):
    tx = optax.chain(cg.corgrad(num_slices=4), optimizer)
    grads = stacked_grads()
    state = tx.init(PARAMS)
    params = PARAMS
    for _ in range(2):
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, PARAMS)
    assert float(jnp.abs(params["bias"]).sum()) > 0
    assert float(optax.tree_utils.tree_get(state, "modification_frequency")) > 0


def test_inject_hyperparams_alpha():
    tx = optax.inject_hyperparams(
        cg.corgrad, static_args=("num_slices", "granularity", "shuffle", "seed", "reduction",
                                 "variant"))(num_slices=4, alpha=0.6, shuffle=False)
    grads = stacked_grads(num_domains=4)
    state = tx.init(PARAMS)
    out, state = jax.jit(tx.update)(grads, state, PARAMS)
    direct = cg.corgrad(4, 0.6, shuffle=False)
    expected, _ = jax.jit(direct.update)(grads, direct.init(PARAMS), PARAMS)
    chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-5)
    state.hyperparams["alpha"] = jnp.asarray(0.0)
    out0, _ = jax.jit(tx.update)(grads, state, PARAMS)
    zero = cg.corgrad(4, 0.0, shuffle=False)
    expected0, _ = jax.jit(zero.update)(grads, zero.init(PARAMS), PARAMS)
    chex.assert_trees_all_close(out0, expected0, rtol=1e-5, atol=1e-5)


def test_schedule_alpha_follows_the_step_count():
    schedule = cg.log_decay_schedule(0.6, 10)
    tx = cg.corgrad(2, schedule, shuffle=False)
    grads = stacked_grads(num_domains=5)
    state = tx.init(PARAMS)
    for step in range(3):
        out, state = jax.jit(tx.update)(grads, state, PARAMS)
        fixed = cg.corgrad(2, float(schedule(step)), shuffle=False)
        expected, _ = jax.jit(fixed.update)(grads, fixed.init(PARAMS), PARAMS)
        chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-6)


def test_log_decay_schedule_values():
    schedule = cg.log_decay_schedule(0.5, 1000)
    assert float(schedule(0)) == pytest.approx(0.5)
    assert float(schedule(999)) == pytest.approx(0.0, abs=1e-6)
    assert float(schedule(5000)) == 0.0  # clipped
    assert float(schedule(30)) == pytest.approx(0.5 * (1 - np.log(31) / np.log(1000)), rel=1e-6)


# -- bad input -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_unequal_leading_sizes_name_the_leaf(name):
    grads = stacked_grads()
    grads["bias"] = grads["bias"][:2]
    tx = transformation(name)
    with pytest.raises(ValueError, match=r"\['bias'\] stacks 2"):
        tx.update(grads, tx.init(PARAMS))


def test_bad_inputs_raise_clear_errors():
    tx = cg.corgrad()
    with pytest.raises(ValueError, match="D >= 2"):
        tx.update({"w": jnp.ones((1, 3))}, tx.init(None))
    with pytest.raises(ValueError, match=r"\['w'\].*expected \(3, 4\)"):
        tx.update({"w": jnp.ones((3, 5))}, tx.init(None), {"w": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"\['w'\] has shape \(4,\), expected \(4, 4\)"):
        tx.update({"w": jnp.ones(4)}, tx.init(None), {"w": jnp.ones(4)})  # not stacked
    with pytest.raises(ValueError, match="scalar, not stacked"):
        tx.update({"w": jnp.ones(())}, tx.init(None))
    with pytest.raises(TypeError, match=r"\['w'\] has dtype int32"):
        tx.update({"w": jnp.ones((3, 2), jnp.int32)}, tx.init(None))
    for kwargs, message in [
        ({"num_slices": 0}, "num_slices must be >= 1"),
        ({"alpha": 1.5}, r"alpha must lie in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must lie in \[0, 1\]"),
        ({"granularity": "neuron"}, "Unknown granularity 'neuron'"),
        ({"variant": "v2"}, "Unknown variant 'v2'"),
        ({"reduction": "max"}, "Unknown reduction 'max'"),
    ]:
        with pytest.raises(ValueError, match=message):
            cg.corgrad(**kwargs)
    with pytest.raises(TypeError, match="num_slices must be an int"):
        cg.corgrad(num_slices=2.5)
    with pytest.raises(ValueError, match="threshold"):
        cg.and_mask(2.0)
    with pytest.raises(ValueError, match="total_steps"):
        cg.log_decay_schedule(0.5, 1)


# -- numerical edge cases ------------------------------------------------------------------

EDGE_CASES = {
    "all zero": lambda g: jax.tree.map(jnp.zeros_like, g),
    "one zero domain": lambda g: jax.tree.map(lambda x: x.at[1].set(0), g),
    "identical domains": lambda g: jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), g),
    "opposite domains": lambda g: jax.tree.map(lambda x: x.at[1].set(-x[0]), g),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_are_finite(name, case):
    # PARAMS has a scalar leaf and leaves smaller than num_slices (bias of 4 < 10 slices).
    grads = EDGE_CASES[case](stacked_grads())
    tx = transformation(name)
    out, state = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
    for leaf in jax.tree.leaves((out, state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert bool(jnp.all(jnp.isfinite(leaf))), (name, case)
    if case == "all zero":
        assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(out))


def test_identical_domains_are_the_plain_sum():
    grads = EDGE_CASES["identical domains"](stacked_grads())
    tx = cg.corgrad()
    out, state = tx.update(grads, tx.init(None))
    chex.assert_trees_all_close(out, jax.tree.map(lambda x: 3 * x[0], grads), rtol=1e-6)
    assert float(state.modification_frequency) == 0
    assert float(state.dominant_fraction) == 0


def test_nan_and_inf_propagate_and_apply_if_finite_skips_the_step():
    grads = stacked_grads()
    grads["bias"] = grads["bias"].at[0, 1].set(jnp.nan)
    grads["conv"]["kernel"] = grads["conv"]["kernel"].at[2, 0, 0, 0, 0].set(jnp.inf)
    tx = cg.corgrad()
    out, _ = tx.update(grads, tx.init(None))
    assert not bool(jnp.all(jnp.isfinite(out["bias"])))
    assert not bool(jnp.all(jnp.isfinite(out["conv"]["kernel"])))
    assert bool(jnp.all(jnp.isfinite(out["scale"])))  # other leaves are untouched
    guarded = optax.chain(cg.corgrad(), optax.apply_if_finite(optax.sgd(1.0), 3))
    updates, state = guarded.update(grads, guarded.init(PARAMS), PARAMS)
    assert int(optax.tree_utils.tree_get(state, "notfinite_count")) == 1
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
