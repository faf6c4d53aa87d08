"""corgrad and the random rules on stacked gradients sharded across 4 virtual CPU devices
give the same result as on one device (run in a subprocess: the device count is fixed at
start-up)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from corgrad_jax import agreement_rand, corgrad, grad_drop, pcgrad, and_mask
    assert jax.device_count() == 4, jax.devices()
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    grads = {"conv": jax.random.normal(keys[0], (4, 3, 3, 8, 16)),
             "dense": jax.random.normal(keys[1], (4, 64, 10)),
             "bias": jax.random.normal(keys[2], (4, 10))}
    mesh = Mesh(np.array(jax.devices()), ("x",))
    by_domain = jax.tree.map(lambda g: jax.device_put(g, NamedSharding(mesh, P("x"))), grads)
    def put(x, *spec):
        return jax.device_put(x, NamedSharding(mesh, P(*spec)))
    by_param = {"conv": put(grads["conv"], None, None, None, None, "x"),
                "dense": put(grads["dense"], None, "x"), "bias": put(grads["bias"])}
    # The random rules too: their draws are functions of the index, whatever the sharding.
    for tx in (corgrad(num_slices=10), corgrad(variant="official"), pcgrad(), and_mask(),
               grad_drop(0.2, seed=1), agreement_rand(seed=2)):
        one_device = jax.tree.map(lambda g: jax.device_put(g, jax.devices()[0]), grads)
        single = jax.jit(tx.update)(one_device, tx.init(None))[0]
        for sharded in (by_domain, by_param):
            out, _ = jax.jit(tx.update)(sharded, tx.init(None))
            assert len(jax.tree.leaves(out)[0].sharding.device_set) >= 1
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(single)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
    print("SHARDED-OK")
    """
)


def test_sharded_inputs_give_the_same_result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SHARDED-OK" in result.stdout


PARTITIONED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from corgrad_jax import corgrad, pcgrad, and_mask, partitioned, upgrad
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("domain", "data"))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    grads = {"conv": jax.random.normal(keys[0], (4, 3, 3, 8, 16)),
             "dense": jax.random.normal(keys[1], (4, 64, 10)),
             "bias": jax.random.normal(keys[2], (4, 10))}
    by_domain = jax.device_put(grads, NamedSharding(mesh, P("domain")))
    seen = {}

    def probe(inner):  # records the layout the wrapped transformation reads
        def update(updates, state, params=None):
            for name, leaf in updates.items():
                jax.debug.inspect_array_sharding(
                    leaf, callback=lambda s, name=name, shape=leaf.shape: seen.update(
                        {name: (shape, s.shard_shape(shape))}))
            return inner.update(updates, state, params)
        return optax.GradientTransformation(inner.init, update)

    cases = [(corgrad(num_slices=10), {}), (corgrad(granularity="layer"), {}),
             (corgrad(num_slices=3, variant="official"), {"keep_leading_axis": True}),
             (pcgrad(), {}), (and_mask(), {}), (upgrad(granularity="element"), {})]
    for inner, options in cases:
        tx = partitioned(probe(inner), ("domain", "data"), **options)
        single = jax.jit(inner.update)(jax.device_put(grads, jax.devices()[0]), inner.init(None))[0]
        unmeshed = jax.jit(tx.update)(grads, tx.init(None))[0]  # no mesh: inner itself
        seen.clear()
        # jax.set_mesh since JAX 0.7.1, jax.sharding.use_mesh before (the core's floor: 0.5.3)
        with (jax.set_mesh if hasattr(jax, "set_mesh") else jax.sharding.use_mesh)(mesh):
            out = jax.jit(tx.update)(by_domain, tx.init(None))[0]
        for name in grads:
            np.testing.assert_allclose(np.asarray(out[name]), np.asarray(single[name]),
                                       rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(np.asarray(unmeshed[name]), np.asarray(single[name]),
                                       rtol=2e-5, atol=2e-5)
            assert out[name].shape == grads[name].shape[1:]
        # a leaf with no split stays as it came (split over "domain": 2 of 4 domains)
        if options:  # rows of axis 0 only: conv (3, 3, 8, 16) has 4 | no d0
            assert seen["conv"] == ((4, 3, 3, 8, 16), (2, 3, 3, 8, 16)), seen
        else:  # contiguous ranges of every flattened leaf, a quarter on each device
            assert seen["conv"] == ((4, 72, 16), (4, 18, 16)), seen
        assert seen["dense"] == ((4, 64, 10), (4, 16, 10)), seen
        assert seen["bias"] == ((4, 10), (2, 10)), seen
    print("PARTITIONED-OK")
    """
)


def test_partitioned_splits_every_leaf_into_contiguous_ranges_with_the_same_result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", PARTITIONED_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PARTITIONED-OK" in result.stdout
