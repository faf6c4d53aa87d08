"""The engine's two passes (``PieceLayout.gram`` and ``.combine``) element for element.

Small integers make every float32 sum exact whatever its order (all partial sums stay
below 2^24), so the passes are compared for equality with int64 NumPy: a missed,
doubled or misplaced element anywhere (a block straddling two pieces, the remainder
after the last whole block, the boundary between two leaves of the small-leaf group) is
an error of at least 1, not a rounding residue. The sizes are ResNet18's own (11.7M
parameters, leaves on both sides of ``SMALL_LEAF``) plus odd ones.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import corgrad_jax as cg
from corgrad_jax._src.element_passes import (
    element_sums,
    segment_combine,
    segment_element_sums,
)
from corgrad_jax._src.pieces import SMALL_LEAF, PieceLayout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from common import resnet18_shapes  # noqa: E402

ODD_SHAPES = [(5003, 3), (1000,), (SMALL_LEAF + 1,), (0,), (1,), (513,), (1024, 2),
              (3, 7, 7), (SMALL_LEAF,), (70_001, 3), (64,)]
CASES = [("layer", 10, "paper"), ("slice", 10, "paper"), ("slice", 10, "official"),
         ("slice", 7, "paper")]


def _integers(rng: np.random.Generator, num_domains: int, shapes: list[tuple[int, ...]]
              ) -> list[np.ndarray]:
    return [rng.integers(-2, 3, size=(num_domains, *shape)).astype(np.int64) for shape in shapes]


def _bounds(layout: PieceLayout, k: int) -> np.ndarray:
    return layout.pieces[k].bounds


def _expected_gram(layout: PieceLayout, leaves: list[np.ndarray]) -> np.ndarray:
    """int64 Gram matrices in the engine's piece order (small leaves first)."""
    grams = []
    for k in layout.small + layout.large:
        flat = leaves[k].reshape(leaves[k].shape[0], -1)
        bounds = _bounds(layout, k)
        grams += [flat[:, a:b] @ flat[:, a:b].T
                  for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return np.stack(grams)


def _expected_combine(layout: PieceLayout, leaves: list[np.ndarray], weights: np.ndarray
                      ) -> list[np.ndarray]:
    outputs: list[np.ndarray] = [None] * len(leaves)  # type: ignore[list-item]
    piece = 0
    for k in layout.small + layout.large:
        flat = leaves[k].reshape(leaves[k].shape[0], -1)
        out = np.zeros(flat.shape[1], np.int64)
        bounds = _bounds(layout, k)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            out[a:b] = weights[piece] @ flat[:, a:b]
            piece += 1
        outputs[k] = out
    return outputs


def _check(shapes: list[tuple[int, ...]], num_domains: int, granularity: str, num_slices: int,
           variant: str, options: dict[str, bool] | None = None) -> None:
    rng = np.random.default_rng(num_domains + num_slices)
    leaves = _integers(rng, num_domains, shapes)
    layout = PieceLayout.of(shapes, granularity=granularity, num_slices=num_slices,
                            variant=variant)
    weights = rng.integers(-2, 3, size=(layout.num_pieces, num_domains))

    @jax.jit
    def passes(flats: list[jax.Array], w: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        return layout.gram(flats), layout.combine(flats, w)

    if options is not None:
        passes = jax.jit(passes.__wrapped__, compiler_options=options)
    flats = [jnp.asarray(x.reshape(num_domains, -1), jnp.float32) for x in leaves]
    gram, combined = passes(flats, jnp.asarray(weights, jnp.float32))
    np.testing.assert_array_equal(np.asarray(gram), _expected_gram(layout, leaves))
    for got, expected in zip(combined, _expected_combine(layout, leaves, weights), strict=True):
        np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("granularity,num_slices,variant", CASES)
@pytest.mark.parametrize("num_domains", [3, 5])
def test_both_passes_on_resnet18_are_exact(granularity, num_slices, variant, num_domains):
    _check(resnet18_shapes(), num_domains, granularity, num_slices, variant)


@pytest.mark.parametrize("granularity,num_slices,variant",
                         [*CASES, ("element", 10, "paper"), ("slice", 100, "paper")])
@pytest.mark.parametrize("num_domains", [2, 4, 6])
def test_both_passes_on_odd_sizes_are_exact(granularity, num_slices, variant, num_domains):
    _check(ODD_SHAPES, num_domains, granularity, num_slices, variant)


@pytest.mark.parametrize("granularity,num_slices,variant", CASES[:3])
def test_both_passes_are_exact_under_reassociation(granularity, num_slices, variant):
    _check(resnet18_shapes() + ODD_SHAPES, 3, granularity, num_slices, variant,
           cg.compiler_options("cpu"))


@pytest.mark.parametrize("sizes", [[1], [64], [0, 65, 0, 3], [40, 7, 6, 9408, 64, 1000],
                                   [63, 1, 64, 129, 20_000, 2]])
def test_segment_sums_and_combine_are_exact(sizes):
    """The concatenated small leaves' per-leaf sums and per-leaf weighted sums, on small
    integers (exact in float32): empty leaves, leaves inside one block, across blocks,
    and blocks that straddle several leaves."""
    rng = np.random.default_rng(len(sizes) + sum(sizes))
    bounds = np.cumsum([0, *sizes])
    flat = rng.integers(-3, 4, (3, bounds[-1])).astype(np.float32)
    weights = rng.integers(-2, 3, (len(sizes), 3)).astype(np.float32)

    def terms(values, others):
        return [(values[0] * values[1] > 0).astype(jnp.int32), values[0] * values[2]]

    sums, combined = jax.jit(lambda f, w: (segment_element_sums(f, terms, bounds),
                                           segment_combine(f, w, bounds)))(
        jnp.asarray(flat), jnp.asarray(weights))
    for s, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        piece = flat[:, start:stop]
        assert int(sums[0][s]) == (piece[0] * piece[1] > 0).sum()
        assert float(sums[1][s]) == (piece[0] * piece[2]).sum()
        np.testing.assert_array_equal(np.asarray(combined)[start:stop], weights[s] @ piece)


@pytest.mark.parametrize("num_terms", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 511, 512, 1024, 1537, 100_003])
def test_element_sums_are_exact(num_terms, size):
    """The one-pass sums of elementwise terms, on small integers (every float32 sum
    exact): one term (reduced as two halves of each block), two and three, on sizes
    below, at and across the block, with a remainder."""
    rng = np.random.default_rng(size + num_terms)
    flat = rng.integers(-3, 4, (3, size)).astype(np.float32)
    other = rng.integers(-2, 3, size).astype(np.float32)

    def terms(values, others):
        (extra,) = others
        every = [(values[0] * values[1] > 0).astype(jnp.int32),
                 values[0] * values[2] + extra, jnp.square(values[1] - extra)]
        return every[:num_terms]

    got = [np.asarray(x) for x in jax.jit(lambda f, o: element_sums(f, terms, (o,)))(
        jnp.asarray(flat), jnp.asarray(other))]
    expected = [(flat[0] * flat[1] > 0).sum(), (flat[0] * flat[2] + other).sum(),
                np.square(flat[1] - other).sum()][:num_terms]
    assert len(got) == num_terms
    for value, reference in zip(got, expected, strict=True):
        assert value == reference
