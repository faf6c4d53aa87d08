"""corgrad on stacked gradients sharded across 4 virtual CPU devices gives the same
result as on one device (run in a subprocess: the device count is fixed at start-up)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from corgrad_jax import corgrad, pcgrad, and_mask
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
    for tx in (corgrad(num_slices=10), corgrad(variant="official"), pcgrad(), and_mask()):
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
