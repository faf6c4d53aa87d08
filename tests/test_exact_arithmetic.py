"""CorGrad's projections against exact rational arithmetic (docs/algorithm.md, Sec. 9).

On pieces shorter than D a projection can empty a piece. Exact arithmetic leaves a true
zero, which conflicts with nothing and is no direction; a float loop leaves a rounding
residue of arbitrary direction, and the official in-place loop projects later domains
onto it. These tests compute the exact result with :class:`fractions.Fraction` (every
float64 is a rational, so the inputs are exact), and check that the library's float64
output equals it to rounding, while the plain float loop of the official code does not.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import slice_bounds

import corgrad_jax

Vector = list[Fraction]


def _dot(a: Vector, b: Vector) -> Fraction:
    return sum((x * y for x, y in zip(a, b, strict=True)), Fraction(0))


def _project(pieces: list[Vector], sequential: bool) -> list[Vector]:
    """Algorithm 1's projections of one piece, in ascending order, exactly: a conflict is
    ``<g_i, g_j> < 0`` and a zero reference is never used."""
    current = [list(piece) for piece in pieces]
    for i in range(len(pieces)):
        for j in (j for j in range(len(pieces)) if j != i):
            reference = current[j] if sequential else pieces[j]
            inner, norm2 = _dot(current[i], reference), _dot(reference, reference)
            if inner < 0 and norm2 > 0:
                current[i] = [x - inner / norm2 * r for x, r in zip(current[i], reference,
                                                                     strict=True)]
    return current


def _float_loop(pieces: np.ndarray, sequential: bool) -> np.ndarray:
    """The same loop in float64, as the official code runs it (no tolerance)."""
    current = pieces.astype(np.float64).copy()
    for i in range(len(pieces)):
        for j in (j for j in range(len(pieces)) if j != i):
            reference = current[j] if sequential else pieces[j]
            inner = current[i] @ reference
            if inner < 0 and reference @ reference > 0:
                current[i] = current[i] - inner / (reference @ reference) * reference
    return current


def _exact(leaf: np.ndarray, granularity: str, num_slices: int, variant: str) -> np.ndarray:
    """The update (sum over domains) of one leaf ``(D, *shape)``, in exact arithmetic."""
    num_domains = leaf.shape[0]
    flat = leaf.reshape(num_domains, -1)
    total = [Fraction(0)] * flat.shape[1]
    for start, stop in slice_bounds(leaf.shape[1:], granularity, num_slices, variant):
        pieces = [[Fraction(float(x)) for x in flat[d, start:stop]] for d in range(num_domains)]
        for piece in _project(pieces, sequential=variant == "official"):
            for offset, value in enumerate(piece):
                total[start + offset] += value
    return np.array([float(x) for x in total]).reshape(leaf.shape[1:])


def _float(leaf: np.ndarray, granularity: str, num_slices: int, variant: str) -> np.ndarray:
    flat = leaf.reshape(leaf.shape[0], -1).astype(np.float64)
    total = np.zeros(flat.shape[1])
    for start, stop in slice_bounds(leaf.shape[1:], granularity, num_slices, variant):
        total[start:stop] = _float_loop(flat[:, start:stop], variant == "official").sum(0)
    return total.reshape(leaf.shape[1:])


@functools.cache
def _library_update(granularity: str, num_slices: int, variant: str) -> Any:
    tx = corgrad_jax.corgrad(num_slices, alpha=None, granularity=granularity, shuffle=False,
                             variant=variant)
    return tx, jax.jit(tx.update)


def _library(leaf: np.ndarray, granularity: str, num_slices: int, variant: str) -> np.ndarray:
    tx, update = _library_update(granularity, num_slices, variant)
    output, _ = update({"w": jnp.asarray(leaf, jnp.float64)}, tx.init(None))
    return np.asarray(output["w"])


def _leaf(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Gaussian gradients, a quarter of the components rounded to integers (so that some
    pieces are exactly parallel or orthogonal)."""
    rng = np.random.default_rng(seed)
    leaf = rng.standard_normal(shape)
    rounded = rng.random(shape) < 0.25
    leaf[rounded] = np.round(2 * leaf[rounded])
    return leaf


CASES = [
    # (granularity, num_slices, variant, leaf shape): pieces of 1 and 2 elements, D = 3, 4
    ("element", 1, "paper", (3, 12)),
    ("slice", 6, "paper", (3, 12)),  # 2-element slices
    ("slice", 6, "official", (3, 12)),  # torch.chunk along axis 0: 6 chunks of 2
    ("slice", 10, "official", (3, 7)),  # a 7-element bias: 7 chunks of 1 element
    ("slice", 4, "official", (4, 8, 1)),  # 4 chunks of 2 rows
    ("layer", 1, "paper", (4, 3)),
]


@pytest.mark.parametrize("granularity, num_slices, variant, shape", CASES)
def test_the_library_equals_exact_arithmetic_on_emptied_pieces(
    granularity: str, num_slices: int, variant: str, shape: tuple[int, ...]
) -> None:
    with jax.enable_x64(True):
        for seed in range(20):
            leaf = _leaf(seed, shape)
            exact = _exact(leaf, granularity, num_slices, variant)
            actual = _library(leaf, granularity, num_slices, variant)
            scale = np.abs(leaf).max()
            np.testing.assert_allclose(actual, exact, rtol=0, atol=1e-12 * scale,
                                       err_msg=f"seed {seed}")


def test_the_official_float_loop_leaves_exact_arithmetic_on_emptied_pieces() -> None:
    """The claim of docs/algorithm.md, Sec. 9: on 1-element chunks (a 7-element bias) with
    3 domains, the in-place float loop projects later domains onto a rounding residue,
    and its output differs from exact arithmetic by far more than rounding; on long
    pieces the two agree."""
    gaps, long_gaps = [], []
    for seed in range(100):
        leaf = _leaf(seed, (3, 7))
        exact = _exact(leaf, "slice", 10, "official")
        gaps.append(np.abs(_float(leaf, "slice", 10, "official") - exact).max())
        long_leaf = _leaf(seed, (3, 20, 3))  # 20 rows: 10 chunks of 6 elements
        long_exact = _exact(long_leaf, "slice", 10, "official")
        long_gaps.append(np.abs(_float(long_leaf, "slice", 10, "official") - long_exact).max())
    assert max(long_gaps) < 1e-12
    assert sum(gap > 0.1 for gap in gaps) >= 5  # whole components lost to a residue


def test_exact_projection_matches_the_paper_on_a_hand_example() -> None:
    # g0 = (1, 0) and g1 = (-1, 1) conflict: g0 - <g0,g1>/|g1|^2 g1 = (1/2, 1/2) and
    # g1 - <g1,g0>/|g0|^2 g0 = (0, 1) against the originals (the paper); in place (the
    # official code) g1 meets the projected g0 = (1/2, 1/2), with which it does not conflict.
    pieces = [[Fraction(1), Fraction(0)], [Fraction(-1), Fraction(1)]]
    assert _project(pieces, sequential=False) == [[Fraction(1, 2), Fraction(1, 2)],
                                                  [Fraction(0), Fraction(1)]]
    assert _project(pieces, sequential=True) == [[Fraction(1, 2), Fraction(1, 2)],
                                                 [Fraction(-1), Fraction(1)]]
