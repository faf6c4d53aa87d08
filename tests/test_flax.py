"""Flax integration: Linen TrainState and NNX Optimizer take stacked gradients when the
aggregator is first in the chain."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.training import train_state

from corgrad_jax import corgrad, per_domain_gradients


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


def make_batch(num_domains=3):
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    return {"x": jax.random.normal(keys[0], (num_domains, 6, 5)),
            "y": jax.random.randint(keys[1], (num_domains, 6), 0, 3)}


def xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_linen_trainstate_apply_gradients_with_stacked_grads():
    model = LinenNet()
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 5)))["params"]
    tx = optax.chain(corgrad(num_slices=4), optax.adam(1e-2))
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state, batch):
        def loss_fn(p, b):
            return xent(state.apply_fn({"params": p}, b["x"]), b["y"])

        losses, grads = per_domain_gradients(loss_fn, state.params, batch)
        return state.apply_gradients(grads=grads), losses

    batch = make_batch()
    new_state, losses = step(state, batch)
    chex.assert_trees_all_equal_shapes(new_state.params, params)
    assert int(new_state.step) == 1
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.params, params)
    assert all(v > 0 for v in jax.tree.leaves(moved))
    for _ in range(30):
        new_state, later = step(new_state, batch)
    assert float(later.mean()) < float(losses.mean())  # it trains
    assert 0 < float(optax.tree_utils.tree_get(new_state.opt_state,
                                               "modification_frequency")) <= 1


def test_nnx_optimizer_update_with_stacked_grads():
    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.hidden = nnx.Linear(5, 8, rngs=rngs)
            self.out = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.hidden(x)))

    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.chain(corgrad(num_slices=4), optax.sgd(0.1)),
                              wrt=nnx.Param)
    graphdef, params = nnx.split(model, nnx.Param)
    before = jax.tree.map(jnp.copy, params)

    def loss_fn(p, b):
        return xent(nnx.merge(graphdef, p)(b["x"]), b["y"])

    losses, grads = per_domain_gradients(loss_fn, params, make_batch())
    optimizer.update(model, grads)
    after = nnx.state(model, nnx.Param)
    deltas = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), after, before)
    assert all(v > 0 for v in jax.tree.leaves(deltas))
