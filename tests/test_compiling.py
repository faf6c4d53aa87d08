"""``compiler_options``: accepted by this JAX, and harmless to every rule's numerics.

Reassociation may only change the order of float sums: every rule compiled with the
options equals the default compilation to float32 rounding, NaN and Inf still reach
the update and still test as NaN and Inf inside the jitted program (which they would
not under XLA's full fast math, whose ``isnan`` may fold to False). Its speed is
measured in ``benchmarks/bench_corgrad.py``, not here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_leaves

import corgrad_jax as cg
from corgrad_jax._src.pieces import SMALL_LEAF

# One leaf above SMALL_LEAF (the blocked per-leaf path) and small ones (the group).
SHAPES = [(SMALL_LEAF // 256 + 7, 256), (64, 3, 3, 3), (64,), (1000,), (10, 7)]
NUM_DOMAINS = 3
# Agr-Rand's noise goes through the normal distribution's inverse error function, whose
# slope grows without bound in the tails: a last-bit change of its polynomial (fused
# multiply-adds) moved one 5-sigma draw by 4e-4 of the largest value.
TOLERANCE = {"agreement_rand": 1e-2}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for info in cg.RULES:
        if info.takes_granularity:
            cases += [(info.name, g) for g in ("model", "layer", "slice", "element")
                      if not (g == "element" and info.needs_num_domains)]
        else:
            cases.append((info.name, "-"))
    return cases


def _make(name: str, granularity: str) -> optax.GradientTransformation:
    info = next(r for r in cg.RULES if r.name == name)
    args = (NUM_DOMAINS,) if info.needs_num_domains else ()
    if info.name == "corgrad":
        return info.factory(10, 0.6, granularity=granularity, shuffle=False)
    if info.takes_granularity:
        return info.factory(*args, granularity=granularity)
    return info.factory(*args)


def _update(tx: optax.GradientTransformation, leaves: list[np.ndarray],
            options: dict[str, bool] | None, *, probe: bool = False) -> list[np.ndarray]:
    tree = {f"l{k}": jnp.asarray(x) for k, x in enumerate(leaves)}
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), tree)

    def update(grads: dict, state: optax.OptState) -> list[jax.Array]:
        out = jax.tree_util.tree_leaves(tx.update(grads, state, params)[0])
        if probe:  # what the compiled program itself sees
            return [jnp.stack([jnp.isnan(x).any(), jnp.isinf(x).any()]) for x in out]
        return out

    out = jax.jit(update, compiler_options=options)(tree, tx.init(params))
    return [np.asarray(x) for x in out]


def test_the_options_are_for_the_cpu_only():
    options = cg.compiler_options("cpu")
    assert options["xla_cpu_enable_fast_math"] is True
    assert all(options[f"xla_cpu_fast_math_honor_{what}"]
               for what in ("nans", "infs", "division", "functions"))
    assert cg.compiler_options("gpu") == {} and cg.compiler_options("tpu") == {}
    options["xla_cpu_enable_fast_math"] = False  # a copy: the next caller is unaffected
    assert cg.compiler_options("cpu")["xla_cpu_enable_fast_math"] is True
    assert cg.compiler_options() == cg.compiler_options(jax.default_backend())


@pytest.mark.parametrize("name,granularity", _cases())
def test_every_rule_equals_the_default_compilation(name, granularity, rng):
    leaves = random_leaves(rng, NUM_DOMAINS, SHAPES, dtype=np.float32)
    default = _update(_make(name, granularity), leaves, None)
    reassociated = _update(_make(name, granularity), leaves, cg.compiler_options("cpu"))
    for got, expected in zip(reassociated, default, strict=True):
        scale = max(float(np.abs(expected).max()), 1e-30)
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=TOLERANCE.get(name, 1e-4) * scale)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", ["corgrad", "upgrad", "mean_gradients"])
def test_nan_and_inf_still_reach_the_update(name, bad, rng):
    leaves = random_leaves(rng, NUM_DOMAINS, SHAPES, dtype=np.float32)
    leaves[0][1, 5, 17] = bad  # one value of one domain in the large leaf
    granularity = "-" if name == "mean_gradients" else "element"
    tx = _make(name, granularity)
    default = _update(tx, leaves, None, probe=True)
    reassociated = _update(tx, leaves, cg.compiler_options("cpu"), probe=True)
    if name != "upgrad":  # UPGrad's element closed form compares and selects it away
        assert default[0].any()  # the default sees it: NaN (or Inf) in the first leaf
    for got, expected in zip(reassociated, default, strict=True):
        np.testing.assert_array_equal(got, expected)
