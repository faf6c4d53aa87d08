"""Pieces of a layer's gradient, and the two passes over the data that CorGrad needs.

Layering and slicing (the paper's Section 3.4, Figure 1) cut each leaf's flattened
per-domain gradient into contiguous *pieces*. Every projected and smoothed gradient is a
linear combination of the original per-domain pieces (SPEC, "A cheaper way"),

.. math::  \\tilde g_i^k = \\sum_m c_{k,i,m}\\, g_m^k ,

so the algorithm only ever reads the data twice:

1. :func:`piece_gram` computes each piece's D x D Gram matrix
   :math:`G^k_{ab} = \\langle g_a^k, g_b^k \\rangle` in one pass;
2. :func:`combine_pieces` writes :math:`\\sum_m w_{k,m} g_m^k` in one pass.

Everything in between runs on tiny coefficient arrays (see ``_src/corgrad.py``).

Both passes are written for XLA's CPU backend, where they were measured: the Gram pass
is one variadic reduction that fuses all D(D+1)/2 products (six separate reductions
read the data D(D+1) times; an ``einsum`` was 12x slower). A variadic reduction
accumulates sequentially, so it is *blocked*: sums over blocks of ``_BLOCK`` elements,
then a sum over the blocks, which keeps float32 errors near those of a pairwise sum.
The short last piece is handled apart instead of padding, which would copy the leaf.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

GRANULARITIES = ("model", "layer", "slice", "element")
VARIANTS = ("paper", "official")

_BLOCK = 512  # elements per block of the blocked variadic reduction

Gram = list[list[jax.Array]]
"""``gram[a][b]``: the inner products of domains a and b, one per piece (symmetric)."""


@dataclasses.dataclass(frozen=True)
class LeafPieces:
    """How one leaf (a layer) is cut: contiguous pieces of ``piece_length`` elements of
    the flattened gradient; the last piece is shorter when ``size`` is not a multiple."""

    size: int
    piece_length: int

    @property
    def num_pieces(self) -> int:
        return -(-self.size // self.piece_length)

    @property
    def full_pieces(self) -> int:
        return self.size // self.piece_length

    @property
    def tail_length(self) -> int:
        return self.size - self.full_pieces * self.piece_length


def leaf_pieces(
    param_shape: Sequence[int], *, granularity: str, num_slices: int, variant: str
) -> LeafPieces:
    """Layering and slicing of one leaf (SPEC, "Granularity").

    * ``model`` and ``layer``: one piece per leaf (``model`` then adds the leaves' Gram
      matrices into one piece for the whole model).
    * ``slice``, paper: ``n = min(num_slices, P)`` contiguous slices of the flattened
      leaf, each ``ceil(P / n)`` long, the last one shorter. (When ``n`` does not divide
      ``P`` this can give fewer than ``n`` slices, as ``torch.chunk`` would; a slice that
      would be pure padding is no piece at all.)
    * ``slice``, official: ``torch.chunk(g, num_slices)`` along axis 0 of the parameter in
      PyTorch layout: chunks of ``ceil(d0 / num_slices)`` rows, which are contiguous in
      the flattened leaf.
    * ``element``: every scalar is a piece.
    """
    size = math.prod(param_shape)
    if size == 0 or granularity in ("model", "layer"):
        return LeafPieces(size, max(size, 1))
    if granularity == "element":
        return LeafPieces(size, 1)
    if variant == "official" and len(param_shape) > 0:
        rows = param_shape[0]
        chunk_rows = -(-rows // num_slices)
        return LeafPieces(size, chunk_rows * (size // rows))
    slices = min(num_slices, size)
    return LeafPieces(size, -(-size // slices))


def _pair_sums(pieces: jax.Array, axis: int) -> list[jax.Array]:
    """Sums of all D(D+1)/2 domain products along ``axis``, in one fused variadic reduce."""
    num_domains = pieces.shape[0]
    products = [pieces[a] * pieces[b] for a in range(num_domains) for b in range(a, num_domains)]
    zero = jnp.zeros((), pieces.dtype)
    return lax.reduce(
        products,
        [zero] * len(products),
        lambda acc, new: [x + y for x, y in zip(acc, new, strict=True)],
        (axis - 1,),  # the domain axis was consumed by the indexing above
    )


def _blocked_pair_sums(pieces: jax.Array) -> list[jax.Array]:
    """``pieces`` is ``(D, K, L)``; returns the pair sums over L, each ``(K,)``."""
    num_domains, num_pieces, length = pieces.shape
    blocks = length // _BLOCK
    if blocks < 2:
        return _pair_sums(pieces, axis=2)
    body = pieces[:, :, : blocks * _BLOCK].reshape(num_domains, num_pieces, blocks, _BLOCK)
    sums = [partial.sum(axis=-1) for partial in _pair_sums(body, axis=3)]
    if length > blocks * _BLOCK:
        rest = _pair_sums(pieces[:, :, blocks * _BLOCK :], axis=2)
        sums = [s + r for s, r in zip(sums, rest, strict=True)]
    return sums


def piece_gram(flat: jax.Array, pieces: LeafPieces) -> Gram:
    """First pass: every piece's Gram matrix, ``gram[a][b]`` of shape ``(num_pieces,)``.

    Args:
      flat: ``(D, P)`` per-domain gradients of one leaf, flattened.
      pieces: how the leaf is cut.
    """
    num_domains = flat.shape[0]
    if pieces.piece_length == 1:  # element granularity: the products are the Gram entries
        sums = [flat[a] * flat[b] for a in range(num_domains) for b in range(a, num_domains)]
    else:
        parts: list[list[jax.Array]] = []
        full = pieces.full_pieces * pieces.piece_length
        if pieces.full_pieces:
            body = flat[:, :full].reshape(num_domains, pieces.full_pieces, pieces.piece_length)
            parts.append(_blocked_pair_sums(body))
        if pieces.tail_length:
            parts.append(_blocked_pair_sums(flat[:, full:].reshape(num_domains, 1, -1)))
        if not parts:  # a zero-size leaf
            sums = [jnp.zeros((0,), flat.dtype)] * (num_domains * (num_domains + 1) // 2)
        else:
            sums = [jnp.concatenate(column) if len(column) > 1 else column[0]
                    for column in zip(*parts, strict=True)]
    gram: Gram = [[None] * num_domains for _ in range(num_domains)]  # type: ignore[list-item]
    pairs = ((a, b) for a in range(num_domains) for b in range(a, num_domains))
    for (a, b), value in zip(pairs, sums, strict=True):
        gram[a][b] = gram[b][a] = value
    return gram


def combine_pieces(
    flat: jax.Array, weights: Sequence[jax.Array], pieces: LeafPieces
) -> jax.Array:
    """Second pass: ``out^k = sum_m weights[m][k] * g_m^k``, one write of P elements.

    Args:
      flat: ``(D, P)`` per-domain gradients of one leaf.
      weights: D arrays of shape ``(num_pieces,)``.
      pieces: how the leaf is cut.

    Returns:
      The ``(P,)`` combined gradient.
    """
    num_domains = flat.shape[0]
    if pieces.num_pieces <= 1 or pieces.piece_length == 1:
        scale = (lambda w: w[0]) if pieces.piece_length != 1 else (lambda w: w)
        if pieces.size == 0:
            return jnp.zeros((0,), flat.dtype)
        out = scale(weights[0]) * flat[0]
        for m in range(1, num_domains):
            out = out + scale(weights[m]) * flat[m]
        return out
    # Repeat each piece's weight over its elements; XLA fuses broadcast, reshape and
    # slice into the elementwise loop, so no P-sized weight array is materialized.
    length, count = pieces.piece_length, pieces.num_pieces
    out = None
    for m in range(num_domains):
        per_element = jnp.broadcast_to(weights[m][:, None], (count, length)).reshape(-1)
        term = per_element[: pieces.size] * flat[m]
        out = term if out is None else out + term
    return out
