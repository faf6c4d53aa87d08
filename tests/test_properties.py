"""Properties of the projection that hold whatever the gradients (hypothesis)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import corgrad_jax

FLOATS = st.one_of(st.floats(1e-3, 10.0), st.floats(-10.0, -1e-3))


@functools.cache
def corgrad(*args: object, **kwargs: object) -> optax.GradientTransformation:
    """``corgrad_jax.corgrad(...)``, made once per configuration: a transformation is pure,
    so the examples share it, and its update compiles once, not once per example."""
    return corgrad_jax.corgrad(*args, **kwargs)


def stacked(num_domains: int, size: int):  # type: ignore[no-untyped-def]
    return arrays(np.float64, (num_domains, size), elements=FLOATS)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_no_conflict_gives_the_plain_sum(data):
    # Positive vectors never conflict: the output is the sum, whatever the slicing.
    grads = np.abs(data.draw(stacked(3, 12)))
    num_slices = data.draw(st.integers(1, 12))
    with jax.enable_x64(True):
        tx = corgrad(num_slices, None)
        out, state = jax.jit(tx.update)({"w": jnp.asarray(grads)}, tx.init(None))
        np.testing.assert_allclose(out["w"], grads.sum(0), rtol=1e-12)
    assert float(state.modification_frequency) == 0


@settings(max_examples=40, deadline=None)
@given(stacked(2, 6))
def test_two_domains_one_piece_projection_does_not_conflict(grads):
    # PCGrad's guarantee on two tasks: each projected gradient has a non-negative inner
    # product with the other domain's gradient, so the sum does not conflict with either.
    with jax.enable_x64(True):
        tx = corgrad(1, None, granularity="layer", reduction="sum", shuffle=False)
        out, _ = jax.jit(tx.update)({"w": jnp.asarray(grads)}, tx.init(None))
        total = np.asarray(out["w"])
    g0, g1 = grads
    for gi, gj in ((g0, g1), (g1, g0)):
        inner = gi @ gj
        projected = gi - min(inner, 0) / (gj @ gj) * gj
        assert projected @ gj >= -1e-9 * np.linalg.norm(gi) * np.linalg.norm(gj)
    for g in (g0, g1):
        assert total @ g >= -1e-9 * np.linalg.norm(total) * np.linalg.norm(g)


@settings(max_examples=25, deadline=None)
@given(stacked(3, 20), st.booleans())
def test_one_slice_equals_layer(grads, official):
    variant = "official" if official else "paper"
    tree = {"a": grads.reshape(3, 4, 5), "b": grads[:, :7]}
    with jax.enable_x64(True):
        tree = jax.tree.map(jnp.asarray, tree)
        by_slice = corgrad(1, 0.6, variant=variant, shuffle=False)
        by_layer = corgrad(10, 0.6, granularity="layer", variant=variant, shuffle=False)
        a, _ = by_slice.update(tree, by_slice.init(None))
        b, _ = by_layer.update(tree, by_layer.init(None))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


@settings(max_examples=25, deadline=None)
@given(stacked(4, 15), st.sampled_from(["layer", "slice", "element"]))
def test_alpha_one_equals_no_smoothing(grads, granularity):
    with jax.enable_x64(True):
        tree = {"w": jnp.asarray(grads)}
        one = corgrad(3, 1.0, granularity=granularity, shuffle=False)
        none = corgrad(3, None, granularity=granularity, shuffle=False)
        a, _ = jax.jit(one.update)(tree, one.init(None))
        b, _ = jax.jit(none.update)(tree, none.init(None))
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(stacked(3, 10), st.floats(0.1, 10.0))
def test_positively_homogeneous(grads, scale):
    # Projection and smoothing commute with scaling all domains by the same c > 0.
    with jax.enable_x64(True):
        tx = corgrad(3, 0.6, shuffle=False)
        a, _ = jax.jit(tx.update)({"w": jnp.asarray(grads)}, tx.init(None))
        b, _ = jax.jit(tx.update)({"w": jnp.asarray(grads * scale)}, tx.init(None))
    np.testing.assert_allclose(np.asarray(b["w"]), scale * np.asarray(a["w"]), rtol=1e-9,
                               atol=1e-9 * scale)
