"""Nash-MTL's Newton solver on ResNet18's 620 slices, against a float64 NumPy Newton run
to convergence on every piece (no early stop), with the same ridge and limit."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from corgrad_jax._src import nash_mtl
from corgrad_jax._src.pieces import PieceLayout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from common import resnet18_shapes  # noqa: E402


def _reference(gram: np.ndarray, ridge: float, iterations: int = 400) -> np.ndarray:
    """Damped Newton on f(a) = a'G a / 2 - sum log a, every piece run ``iterations``
    steps in float64, whatever its weights do."""
    num_pieces, num_domains, _ = gram.shape
    gram = gram + ridge * np.eye(num_domains)
    alpha = np.ones((num_pieces, num_domains))
    for _ in range(iterations):
        gradient = np.einsum("kab,kb->ka", gram, alpha) - 1 / alpha
        hessian = gram + np.einsum("ka,ab->kab", 1 / alpha**2, np.eye(num_domains))
        newton = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        decrement = np.sqrt(np.maximum((gradient * newton).sum(-1), 0))
        size = np.where(decrement > 0.25, 1 / (1 + decrement), 1.0)
        moved = alpha - size[:, None] * newton
        alpha = np.where(moved > 0, moved, alpha / 2)
    return alpha


@pytest.mark.parametrize("num_domains", [3, 5])
def test_newton_weights_and_unsolvable_pieces_equal_a_float64_run_to_the_end(num_domains):
    # ResNet18's leaves cut into 10 slices: 620 pieces, of which the one-element tails of
    # the 64-element leaves have rank one (no solution when their signs differ).
    layout = PieceLayout.of(resnet18_shapes(10, layout="flax"), granularity="slice", num_slices=10,
                            variant="paper")
    rng = np.random.default_rng(num_domains)
    flats = [jnp.asarray(rng.standard_normal((num_domains, int(np.prod(shape))),
                                             dtype=np.float32))
             for shape in resnet18_shapes(10, layout="flax")]
    gram = np.asarray(jax.jit(layout.gram)(flats), np.float64)
    gram = gram / np.sqrt((gram**2).sum((1, 2)))[:, None, None]
    alpha, solvable = jax.jit(nash_mtl.bargaining_weights, static_argnums=2)(
        jnp.asarray(gram, jnp.float32), jnp.ones(gram.shape[:2], jnp.float32), 100)
    ridge = nash_mtl._RIDGE[jnp.dtype(jnp.float32)]
    expected = _reference(gram, ridge)
    expected_solvable = expected.max(-1) < 0.1 / np.sqrt(ridge)
    assert 0 < (~expected_solvable).sum() < 0.1 * len(gram)  # the case is exercised
    np.testing.assert_array_equal(np.asarray(solvable), expected_solvable)
    np.testing.assert_allclose(np.asarray(alpha)[expected_solvable],
                               expected[expected_solvable], rtol=2e-3)
