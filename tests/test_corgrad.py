"""corgrad() against the independent float64 oracle, for every granularity and variant."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_leaves
from oracle import corgrad_oracle

from corgrad_jax import corgrad, log_decay_schedule, pcgrad
from corgrad_jax._src.projection import element_projection

SHAPES = [(6, 4, 3, 3), (7,), (13, 5), (), (2, 3)]  # conv, bias, linear, scalar, tiny


def run(tx: optax.GradientTransformation, leaves, params=None):
    tree = {f"leaf{k}": jnp.asarray(x) for k, x in enumerate(leaves)}
    state = tx.init(params)
    out, state = jax.jit(tx.update)(tree, state, params)
    return [np.asarray(out[f"leaf{k}"]) for k in range(len(leaves))], state


def diag(state, name):
    return float(optax.tree_utils.tree_get(state, name))


@pytest.mark.parametrize("granularity", ["model", "layer", "slice", "element"])
@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("num_domains", [3, 4])
def test_matches_float64_oracle(granularity, variant, num_domains, rng):
    leaves = random_leaves(rng, num_domains, SHAPES)
    with jax.enable_x64(True):
        got, state = run(
            corgrad(4, 0.6, granularity=granularity, variant=variant, shuffle=False), leaves)
        expected, diagnostics = corgrad_oracle(
            leaves, num_slices=4, alpha=0.6, granularity=granularity, variant=variant)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-9)
    for name, value in diagnostics.items():
        assert diag(state, name) == pytest.approx(value, rel=1e-5, abs=1e-7), name
    if granularity != "model":  # the test data must exercise the projections
        assert 0 < diag(state, "modification_frequency") < 1


@pytest.mark.parametrize(("variant", "alpha"), [("paper", 0.6), ("official", None)])
def test_element_granularity_with_large_and_small_leaves_matches_oracle(variant, alpha, rng):
    # Leaves up to SMALL_LEAF elements go through both passes concatenated, their layer
    # norms from one segmented pass; the large ones one by one. Leaves of very different
    # scales make the smoothing's dominant domains differ from leaf to leaf, so a leaf's
    # norms or weights put on another leaf would show. (The oracle loops over elements
    # in Python: two of the four variant and alpha pairs keep it to 12 s.)
    shapes = [(40,), (3, 3, 8, 1024), (7,), (2, 3), (3, 3, 4, 4), (9000,)]
    leaves = random_leaves(rng, 4, shapes)
    for k, scale in enumerate([1e-3, 1.0, 30.0, 1e2, 0.2, 5.0]):
        leaves[k] = leaves[k] * scale * rng.uniform(0.2, 3.0, (4,) + (1,) * len(shapes[k]))
    with jax.enable_x64(True):
        got, state = run(corgrad(4, alpha, granularity="element", variant=variant,
                                 shuffle=False), leaves)
        expected, diagnostics = corgrad_oracle(leaves, num_slices=4, alpha=alpha,
                                               granularity="element", variant=variant)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-9 * np.abs(e).max())
    for name, value in diagnostics.items():
        assert diag(state, name) == pytest.approx(value, rel=1e-5, abs=1e-7), name
    if alpha is not None:  # the smoothing acts, and differently on different leaves
        assert 0 < diag(state, "dominant_fraction") < 1


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("num_domains", [2, 3, 5])
def test_element_projection_is_the_projection_loop_on_scalars(sequential, num_domains, rng):
    # One element per piece: g_i meets every other domain's value (its projected one
    # in the official order, when j < i) and is emptied by the first of opposite sign.
    # Values from {-2, ..., 2} with zeros, NaN and infinities: the closed form must keep
    # what the loop keeps (zeros with their sign, NaN) and empty what it empties.
    values = rng.integers(-2, 3, (num_domains, 4000)).astype(np.float32)
    values[0, ::97], values[-1, ::83], values[-1, ::79] = np.nan, np.inf, -np.inf
    values[1, ::89] = -0.0
    projected, emptied = jax.jit(lambda v: element_projection(list(v), sequential=sequential))(
        jnp.asarray(values))
    expected = values.copy()
    for i in range(num_domains):
        for j in range(num_domains):
            reference = expected[j] if sequential else values[j]
            with np.errstate(invalid="ignore"):  # inf * 0 is NaN, which does not conflict
                conflict = expected[i] * reference < 0
            if j != i:
                expected[i] = np.where(conflict, np.float32(0), expected[i])
    conflicts = ((expected == 0) & (values != 0) & ~np.isnan(values)).sum(0)
    for got, want in zip(projected, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
        np.testing.assert_array_equal(np.signbit(np.asarray(got)), np.signbit(want))
    np.testing.assert_array_equal(np.asarray(emptied), conflicts)
    assert 0 < conflicts.sum() < values.size  # the data has both kinds


@pytest.mark.parametrize("granularity", ["layer", "slice"])
def test_float32_close_to_oracle(granularity, rng):
    leaves = random_leaves(rng, 3, [(64, 32, 3, 3), (600,), (10,)], dtype=np.float32)
    got, _ = run(corgrad(10, 0.6, granularity=granularity, shuffle=False), leaves)
    expected, _ = corgrad_oracle(leaves, num_slices=10, alpha=0.6, granularity=granularity,
                                 tie_rtol=1e-3)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-4 * np.abs(e).max())


def test_mean_reduction_and_schedule(rng):
    leaves = random_leaves(rng, 3, [(20, 3)])
    schedule = log_decay_schedule(0.8, 50)
    tx = corgrad(3, schedule, reduction="mean", shuffle=False)
    tree = {"w": jnp.asarray(leaves[0], jnp.float32)}
    state = tx.init(None)
    for step in range(3):
        out, state = jax.jit(tx.update)(tree, state)
        expected, _ = corgrad_oracle(leaves, num_slices=3, alpha=float(schedule(step)),
                                     reduction="mean", tie_rtol=1e-3)
        np.testing.assert_allclose(out["w"], expected[0], rtol=1e-4, atol=1e-5)
    assert int(state.count) == 3


@pytest.mark.parametrize("variant", ["paper", "official"])  # Jacobi, Gauss-Seidel steps
def test_shuffle_draws_an_order_per_domain_every_step(variant, rng):
    leaves = random_leaves(rng, 3, [(40,)], shared=0.0)
    candidates = []
    others = [[j for j in range(3) if j != i] for i in range(3)]
    for perms in itertools.product(*[list(itertools.permutations(o)) for o in others]):
        out, _ = corgrad_oracle(leaves, num_slices=4, alpha=None, variant=variant,
                                orders=[list(p) for p in perms])
        candidates.append(out[0])
    tx = corgrad(4, None, shuffle=True, seed=3, variant=variant)
    state = tx.init(None)
    seen = set()
    with jax.enable_x64(True):
        tree = {"w": jnp.asarray(leaves[0])}
        for _ in range(12):
            out, state = jax.jit(tx.update)(tree, state)
            distances = [np.abs(np.asarray(out["w"]) - c).max() for c in candidates]
            assert min(distances) < 1e-9  # every step is one of the orderings
            seen.add(int(np.argmin(distances)))
    assert len(seen) > 1  # and the ordering changes between steps


def test_pcgrad_is_model_granularity_without_smoothing(rng):
    leaves = random_leaves(rng, 3, SHAPES)
    with jax.enable_x64(True):
        got, _ = run(pcgrad(shuffle=False), leaves)
        same, _ = run(corgrad(7, None, granularity="model", shuffle=False), leaves)
    expected, _ = corgrad_oracle(leaves, alpha=None, granularity="model")
    for g, s, e in zip(got, same, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(g, s)


def test_official_slicing_is_torch_chunk_along_axis_0():
    from corgrad_jax._src.pieces import leaf_pieces

    # torch.chunk(torch.zeros(64, 3, 7, 7), 10): chunks of 7 rows -> 10 chunks, last has 1.
    pieces = leaf_pieces((64, 3, 7, 7), granularity="slice", num_slices=10, variant="official")
    assert (pieces.piece_length, pieces.num_pieces) == (7 * 147, 10)
    # torch.chunk(torch.zeros(3, 8), 10): one row per chunk, 3 chunks.
    pieces = leaf_pieces((3, 8), granularity="slice", num_slices=10, variant="official")
    assert (pieces.piece_length, pieces.num_pieces) == (8, 3)
    paper = leaf_pieces((3, 8), granularity="slice", num_slices=10, variant="paper")
    assert (paper.piece_length, paper.num_pieces) == (3, 8)


def test_large_leaf_uses_blocked_gram_accurately(rng):
    # Longer than two blocks of the blocked reduction, with a short last slice.
    leaves = random_leaves(rng, 3, [(5003, 3)], dtype=np.float32)
    got, _ = run(corgrad(7, 0.5, shuffle=False), leaves)
    expected, _ = corgrad_oracle(leaves, num_slices=7, alpha=0.5, tie_rtol=1e-3)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
