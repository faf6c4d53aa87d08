"""The sign-agreement baselines against NumPy float64 transcriptions of their papers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_leaves

from corgrad_jax import (
    agreement_rand,
    agreement_sum,
    and_mask,
    grad_drop,
    mean_gradients,
    sand_mask,
)
from corgrad_jax._src.agreement import grad_drop_update


def leaves_tree(leaves):
    return {f"l{k}": jnp.asarray(x) for k, x in enumerate(leaves)}


@pytest.fixture
def leaves(rng):
    out = random_leaves(rng, 3, [(5, 4), (9,), (2, 2, 3)])
    out[0][:, 0, 0] = [1.0, 0.0, 2.0]  # a zero agrees with nothing
    return out


def test_agreement_sum(leaves):
    with jax.enable_x64(True):
        tx = agreement_sum()
        out, state = tx.update(leaves_tree(leaves), tx.init(None))
    changed = 0
    for k, x in enumerate(leaves):
        signs = np.sign(x)
        agree = np.abs(signs.sum(0)) == x.shape[0]
        np.testing.assert_allclose(out[f"l{k}"], np.where(agree, x.sum(0), 0), rtol=1e-12)
        changed += (~agree).sum()
    assert out["l0"][0, 0] == 0
    size = sum(x[0].size for x in leaves)
    assert float(state.modification_frequency) == pytest.approx(changed / size, rel=1e-6)


def test_agreement_rand_keeps_agreeing_components_and_redraws_the_rest(leaves):
    with jax.enable_x64(True):
        tx = agreement_rand(seed=4)
        out, state = tx.update(leaves_tree(leaves), tx.init(None))
        out2, _ = tx.update(leaves_tree(leaves), state)
    for k, x in enumerate(leaves):
        agree = np.abs(np.sign(x).sum(0)) == x.shape[0]
        got = np.asarray(out[f"l{k}"])
        np.testing.assert_allclose(got[agree], x.sum(0)[agree], rtol=1e-12)
        assert np.all(got[~agree] != 0)
        assert np.all(got[~agree] != np.asarray(out2[f"l{k}"])[~agree])  # fresh noise
    # The noise scale is the mean |agreeing sum| of the layer: check on a large layer.
    rng = np.random.default_rng(1)
    big = rng.standard_normal((3, 20000)) + 0.5
    tx = agreement_rand(seed=0)
    out, _ = tx.update({"w": jnp.asarray(big, jnp.float32)}, tx.init(None))
    agree = np.abs(np.sign(big).sum(0)) == 3
    scale = np.abs(big.sum(0)[agree]).mean()
    assert np.asarray(out["w"])[~agree].std() == pytest.approx(scale, rel=0.05)


@pytest.mark.parametrize("threshold", [1.0, 0.5, 0.0])
def test_and_mask_is_domainbed_andmask(leaves, threshold):
    with jax.enable_x64(True):
        tx = and_mask(threshold)
        out, _ = tx.update(leaves_tree(leaves), tx.init(None))
    for k, x in enumerate(leaves):
        mask = (np.abs(np.sign(x).mean(0)) >= threshold).astype(np.float64)
        expected = mask * x.mean(0) / (1e-10 + mask.sum() / mask.size)
        np.testing.assert_allclose(out[f"l{k}"], expected, rtol=1e-12, atol=1e-300)


def test_mean_gradients(leaves):
    with jax.enable_x64(True):
        tx = mean_gradients()
        out, state = tx.update(leaves_tree(leaves), tx.init(None))
    for k, x in enumerate(leaves):
        np.testing.assert_allclose(out[f"l{k}"], x.mean(0), rtol=1e-12)
    assert float(state.modification_frequency) == 0


@pytest.mark.parametrize("rule", ["agreement_sum", "and_mask", "sand_mask"])
def test_diagnostics_over_many_blocks_equal_float64(rule):
    """The share of changed components and ||reference - u|| / ||reference||, summed in
    one pass over blocks of the leaves, against NumPy in float64 on leaves of 1 to
    300k components (below, at and across the pass's blocks, with remainders)."""
    rng = np.random.default_rng(7)
    shapes = [(3, 3, 64, 128), (300_007,), (511,), (512,), (1,), (33, 17)]
    leaves = [rng.standard_normal((3, *shape)).astype(np.float32) + 0.3 for shape in shapes]
    tx = {"agreement_sum": agreement_sum, "and_mask": and_mask, "sand_mask": sand_mask}[rule]()
    out, state = jax.jit(tx.update)(leaves_tree(leaves), tx.init(None))
    changed = removed2 = total2 = 0.0
    for k, x in enumerate(leaves):
        x64, u = x.astype(np.float64), np.asarray(out[f"l{k}"], np.float64)
        reference = x64.sum(0) if rule == "agreement_sum" else x64.mean(0)
        if rule == "sand_mask":  # the components whose mask is zero (m <= 1e-17)
            changed += (u == 0).sum()
        else:
            changed += (np.abs(np.sign(x64).sum(0)) != x.shape[0]).sum()
        removed2 += np.square(reference - u).sum()
        total2 += np.square(reference).sum()
    size = sum(x[0].size for x in leaves)
    assert float(state.modification_frequency) == pytest.approx(changed / size, rel=1e-6)
    assert float(state.modification_ratio) == pytest.approx(np.sqrt(removed2 / total2),
                                                            rel=1e-4)


@pytest.mark.parametrize("rule", ["agreement_sum", "grad_drop"])
def test_per_component_rules_keep_every_leaf_in_place(rule, rng):
    # The small leaves go through these rules concatenated: a large leaf between small
    # ones, against the rule leaf by leaf (GradDrop with the model's one draw, cut into
    # the leaves in their order).
    leaves = random_leaves(rng, 3, [(40,), (3, 3, 8, 1024), (7,), (2, 3)], dtype=np.float32)
    tx = agreement_sum() if rule == "agreement_sum" else grad_drop(0.3, seed=5)
    state = tx.init(None)
    out, new_state = jax.jit(tx.update)(leaves_tree(leaves), state)
    sizes = [x[0].size for x in leaves]
    bounds = np.cumsum([0, *sizes])
    uniform = np.asarray(jax.random.uniform(jax.random.split(state.key)[1], (bounds[-1],)))
    changed = 0
    for k, x in enumerate(leaves):
        if rule == "agreement_sum":
            agree = np.abs(np.sign(x).sum(0)) == x.shape[0]
            expected, dropped = np.where(agree, x.sum(0), 0), ~agree
        else:
            numbers = jnp.asarray(uniform[bounds[k]:bounds[k + 1]].reshape(x.shape[1:]))
            expected, dropped = grad_drop_update(jnp.asarray(x), numbers,
                                                 jnp.full((3,), 0.3, jnp.float32))
        np.testing.assert_allclose(out[f"l{k}"], expected, rtol=1e-6,
                                   atol=1e-6 * np.abs(x).max())
        changed += int(np.asarray(dropped).sum())
    assert float(new_state.modification_frequency) == pytest.approx(changed / sum(sizes),
                                                                     rel=1e-6)
