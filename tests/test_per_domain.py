"""per_domain_gradients: the three methods against per-domain jax.grad calls."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from corgrad_jax import per_domain_gradients


def loss_fn(params, batch):
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), batch["y"]])


@pytest.fixture
def problem():
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    params = {"w1": jax.random.normal(keys[0], (6, 8)), "b1": jnp.zeros(8),
              "w2": jax.random.normal(keys[1], (8, 3))}
    batch = {"x": jax.random.normal(keys[2], (4, 5, 6)),
             "y": jax.random.randint(keys[3], (4, 5), 0, 3)}
    return params, batch


@pytest.mark.parametrize("method", ["loop", "vmap", "vjp"])
def test_methods_agree_with_separate_grads(problem, method):
    params, batch = problem
    losses, grads = jax.jit(lambda p, b: per_domain_gradients(loss_fn, p, b, method=method))(
        params, batch)
    assert losses.shape == (4,)
    for d in range(4):
        domain = jax.tree.map(lambda x, d=d: x[d], batch)
        loss, grad = jax.value_and_grad(loss_fn)(params, domain)
        np.testing.assert_allclose(losses[d], loss, rtol=1e-5)
        chex.assert_trees_all_close(jax.tree.map(lambda g, d=d: g[d], grads), grad, rtol=1e-4,
                                    atol=1e-6)


@pytest.mark.parametrize("method", ["loop", "vmap", "vjp"])
def test_has_aux(problem, method):
    params, batch = problem

    def with_aux(p, b):
        return loss_fn(p, b), {"n": b["y"].shape[0]}

    (losses, aux), grads = per_domain_gradients(with_aux, params, batch, method=method,
                                                has_aux=True)
    assert losses.shape == (4,)
    np.testing.assert_array_equal(aux["n"], [5, 5, 5, 5])
    assert grads["w1"].shape == (4, 6, 8)


def test_errors(problem):
    params, batch = problem
    with pytest.raises(ValueError, match="Unknown method"):
        per_domain_gradients(loss_fn, params, batch, method="scan")
    batch["y"] = batch["y"][:3]
    with pytest.raises(ValueError, match="same D"):
        per_domain_gradients(loss_fn, params, batch)
