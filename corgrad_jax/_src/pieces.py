"""Pieces of a layer's gradient, and the two passes over the data that CorGrad needs.

Layering and slicing (the paper's Section 3.4, Figure 1) cut each leaf's flattened
per-domain gradient into contiguous *pieces*. Every projected and smoothed gradient is a
linear combination of the original per-domain pieces (docs/algorithm.md, Sec. 8),

.. math::  \\tilde g_i^k = \\sum_m c_{k,i,m}\\, g_m^k ,

so the algorithm only ever reads the data twice:

1. :func:`piece_gram` computes each piece's D x D Gram matrix
   :math:`G^k_{ab} = \\langle g_a^k, g_b^k \\rangle` in one pass;
2. :func:`combine_pieces` writes :math:`\\sum_m w_{k,m} g_m^k` in one pass.

Everything in between runs on tiny coefficient arrays: a *rule* maps the Gram matrices
to coefficients (``_src/engine.py``; CorGrad's in ``_src/corgrad.py``).
:class:`PieceLayout` bundles how every leaf of a pytree is cut and runs both passes over
all of them.

Both passes are written for XLA's CPU backend, where they were measured: the Gram pass
is one variadic reduction that fuses all D(D+1)/2 products (six separate reductions
read the data D(D+1) times; an ``einsum`` was 12x slower). A variadic reduction
accumulates sequentially, so it is *blocked*: sums over blocks of ``BLOCK`` elements,
then a sum over the blocks, which keeps float32 errors near those of a pairwise sum.
The short last piece is handled apart instead of padding, which would copy the leaf.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

GRANULARITIES = ("model", "layer", "slice", "element")
VARIANTS = ("paper", "official")

BLOCK = 512  # elements per block of the blocked variadic reduction
_PAIRED = 2  # neighbouring elements whose products are added first (see _pair_sums)
GROUP_BLOCK = 64  # elements per block of the concatenated small leaves (see group_gram)
SMALL_LEAF = 65_536  # leaves up to this size are processed together (see group_gram)



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

    @property
    def blocked(self) -> bool:
        """Long pieces are read in blocks of ``BLOCK`` elements (see :class:`BlockPlan`)."""
        return self.piece_length >= 2 * BLOCK

    @property
    def bounds(self) -> np.ndarray:
        """``(num_pieces + 1,)``: where every piece starts in the flattened leaf, then its
        size."""
        return np.append(np.arange(self.num_pieces) * self.piece_length, self.size)

    def block_plan(self) -> BlockPlan:
        return BlockPlan.of(self.bounds, BLOCK)


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPlan:
    """How a flat array of contiguous pieces is read: as a prefix of ``num_blocks`` whole
    blocks of ``block`` elements, each inside one piece (``regular``) or straddling two,
    plus the short remainder. The elements of straddling blocks and of the remainder are
    the ``irregular`` ones, gathered and handled element by element (fewer than
    ``block`` per piece boundary). Reading the prefix as ``(num_blocks, block)`` is a
    free reshape; a ``(K, L)`` view with ``L`` no multiple of the block would need
    strided slices, which XLA:CPU did not fuse (10x slower at D = 5)."""

    block: int
    num_blocks: int
    piece_of_block: np.ndarray
    regular: np.ndarray
    irregular: np.ndarray
    piece_of_irregular: np.ndarray

    @classmethod
    def of(cls, bounds: np.ndarray, block: int) -> BlockPlan:
        """The plan for pieces starting at ``bounds[:-1]`` of an array of ``bounds[-1]``
        elements (empty pieces allowed), read in blocks of ``block``."""
        size = int(bounds[-1])
        num_blocks = size // block
        starts = np.arange(num_blocks) * block
        piece_of_block = np.searchsorted(bounds, starts, side="right") - 1
        straddles = piece_of_block != np.searchsorted(bounds, starts + block - 1,
                                                      side="right") - 1
        irregular = np.concatenate(
            [np.arange(start, start + block) for start in starts[straddles]]
            + [np.arange(num_blocks * block, size)]).astype(np.int32)
        return cls(block, num_blocks, piece_of_block.astype(np.int32), ~straddles, irregular,
                   (np.searchsorted(bounds, irregular, side="right") - 1).astype(np.int32))


def leaf_pieces(
    param_shape: Sequence[int], *, granularity: str, num_slices: int, variant: str
) -> LeafPieces:
    """Layering and slicing of one leaf (docs/algorithm.md, Sec. 2).

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


def _pair_sums(pieces: jax.Array, axis: int, paired: bool = False) -> list[jax.Array]:
    """Sums of all D(D+1)/2 domain products along ``axis``, in one fused variadic reduce.

    With ``paired``, ``pieces`` has a trailing axis of :data:`_PAIRED` neighbouring
    elements (a free reshape of contiguous data), and each reduction step first
    adds their products: :math:`\\sum_t (a_{2t} b_{2t} + a_{2t+1} b_{2t+1})`. That halves
    the chain of dependent float adds, which XLA:CPU may not reorder: the Gram pass of
    ResNet18 at D=3 took 1.08x the floor instead of 1.32x, and 0.57x instead of 0.99x
    with reassociation allowed (:func:`~corgrad_jax.compiler_options`, where it then runs
    at memory speed), in one run. Four or eight neighbours were no faster.
    """
    num_domains = pieces.shape[0]

    def product(a: int, b: int) -> jax.Array:
        if paired:
            return (pieces[a, ..., 0] * pieces[b, ..., 0]
                    + pieces[a, ..., 1] * pieces[b, ..., 1])
        return pieces[a] * pieces[b]

    products = [product(a, b) for a in range(num_domains) for b in range(a, num_domains)]
    zero = jnp.zeros((), pieces.dtype)
    return lax.reduce(
        products,
        [zero] * len(products),
        lambda acc, new: [x + y for x, y in zip(acc, new, strict=True)],
        (axis - 1,),  # the domain axis was consumed by the indexing above
    )


def piece_gram(flat: jax.Array, pieces: LeafPieces) -> jax.Array:
    """First pass: every piece's Gram matrix, ``(num_pieces, D, D)``.

    Args:
      flat: ``(D, P)`` per-domain gradients of one leaf, flattened.
      pieces: how the leaf is cut.
    """
    num_domains = flat.shape[0]
    if pieces.size == 0:
        return jnp.zeros((0, num_domains, num_domains), flat.dtype)
    if pieces.piece_length == 1:  # element granularity: the products are the Gram entries
        sums = _products(flat)
    elif pieces.blocked:
        sums = _blocked_pair_sums(flat, pieces.block_plan(), pieces.num_pieces)
    else:  # short pieces: one sequential reduction each is accurate enough
        parts = []
        full = pieces.full_pieces * pieces.piece_length
        if pieces.full_pieces:
            body = flat[:, :full].reshape(num_domains, pieces.full_pieces, pieces.piece_length)
            parts.append(jnp.stack(_pair_sums(body, axis=2), axis=-1))
        if pieces.tail_length:
            tail = flat[:, full:].reshape(num_domains, 1, -1)
            parts.append(jnp.stack(_pair_sums(tail, axis=2), axis=-1))
        sums = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    return sums[:, _square_index(num_domains)]  # (K, D, D)


def combine_pieces(flat: jax.Array, weights: jax.Array, pieces: LeafPieces) -> jax.Array:
    """Second pass: ``out^k = sum_m weights[k, m] g_m^k``, one write of P elements.

    Args:
      flat: ``(D, P)`` per-domain gradients of one leaf.
      weights: ``(num_pieces, D)``.
      pieces: how the leaf is cut.

    Returns:
      The ``(P,)`` combined gradient.
    """
    num_domains = flat.shape[0]
    if pieces.size == 0:
        return jnp.zeros((0,), flat.dtype)
    if pieces.piece_length == 1:  # element granularity: one weight per element
        return _weighted_sum(flat, [weights[:, m] for m in range(num_domains)])
    if pieces.num_pieces == 1:
        return _weighted_sum(flat, [weights[0, m] for m in range(num_domains)])
    if not pieces.blocked:
        per_element = jnp.repeat(weights, pieces.piece_length, axis=0,
                                 total_repeat_length=pieces.size)
        return _weighted_sum(flat, [per_element[:, m] for m in range(num_domains)])
    return blocked_combine(flat, weights, pieces.block_plan())


def _blocked_pair_sums(flat: jax.Array, plan: BlockPlan, num_pieces: int) -> jax.Array:
    """``(num_pieces, pairs)`` sums of the domain products of every piece, read as
    ``plan`` says: one variadic reduction over the whole blocks, then a segment sum of
    the block sums of the regular blocks and of the irregular elements' products."""
    return _segment_pair_sums([_block_pair_sums(flat, plan)], num_pieces)


class _BlockSums(NamedTuple):
    """The Gram pass's reads of one flat array, before they are added up by piece."""

    blocks: jax.Array  # (num_blocks, pairs): the pair sums of every whole block
    loose: jax.Array  # (irregular, pairs): the irregular elements' products
    plan: BlockPlan
    first_piece: int  # the number of the array's first piece among all the pieces


def _block_pair_sums(flat: jax.Array, plan: BlockPlan, first_piece: int = 0) -> _BlockSums:
    """The block sums and irregular products of ``flat`` read as ``plan`` says."""
    num_domains = flat.shape[0]
    body = flat[:, :plan.num_blocks * plan.block].reshape(num_domains, plan.num_blocks,
                                                          plan.block // _PAIRED, _PAIRED)
    block_sums = jnp.stack(_pair_sums(body, axis=2, paired=True), axis=-1)
    return _BlockSums(block_sums, _products(flat[:, plan.irregular]), plan, first_piece)


def _segment_pair_sums(parts: Sequence[_BlockSums], num_pieces: int) -> jax.Array:
    """``(num_pieces, pairs)``: the rows of several :class:`_BlockSums` added up by piece
    (the straddling blocks' sums left out, as their elements are irregular): one segment
    sum of all the block sums, then one of all the irregular products, so that every
    piece adds its rows in the order a segment sum of its own leaf would."""
    def joined(arrays: list[jax.Array]) -> jax.Array:
        return jnp.concatenate(arrays) if len(arrays) > 1 else arrays[0]

    blocks = joined([part.blocks for part in parts])
    regular = np.concatenate([part.plan.regular for part in parts])
    blocks = blocks * jnp.asarray(regular, blocks.dtype)[:, None]
    block_pieces = np.concatenate([part.plan.piece_of_block + part.first_piece
                                   for part in parts])
    sums = jax.ops.segment_sum(blocks, block_pieces, num_pieces, indices_are_sorted=True)
    loose = [part for part in parts if part.plan.irregular.size]
    if loose:
        sums = sums + jax.ops.segment_sum(
            joined([part.loose for part in loose]),
            np.concatenate([part.plan.piece_of_irregular + part.first_piece
                            for part in loose]),
            num_pieces, indices_are_sorted=True)
    return sums


def blocked_combine(flat: jax.Array, weights: jax.Array, plan: BlockPlan) -> jax.Array:
    """``out^k = sum_m weights[k, m] g_m^k`` over pieces read as ``plan`` says: whole
    blocks with their piece's weights broadcast, then the irregular elements set."""
    num_domains, size = flat.shape
    prefix = plan.num_blocks * plan.block
    block_weights = weights[plan.piece_of_block]  # (num_blocks, D)
    out = _weighted_sum(
        flat[:, :prefix],
        [jnp.broadcast_to(block_weights[:, m, None], (plan.num_blocks, plan.block)).reshape(-1)
         for m in range(num_domains)])
    if prefix < size:
        out = jnp.concatenate([out, jnp.zeros((size - prefix,), out.dtype)])
    if plan.irregular.size:
        loose_weights = weights[plan.piece_of_irregular]
        loose = _weighted_sum(flat[:, plan.irregular],
                              [loose_weights[:, m] for m in range(num_domains)])
        out = out.at[plan.irregular].set(loose, indices_are_sorted=True, unique_indices=True)
    return out


def _products(values: jax.Array) -> jax.Array:
    """``(D, n) -> (n, pairs)``: the D(D+1)/2 domain products of every element."""
    num_domains = values.shape[0]
    return jnp.stack([values[a] * values[b] for a in range(num_domains)
                      for b in range(a, num_domains)], axis=-1)


@dataclasses.dataclass(frozen=True)
class PieceLayout:
    """How every leaf of a pytree is cut, and the two passes over all of them.

    Small leaves (at most :data:`SMALL_LEAF` elements: biases, BatchNorm scales) are
    processed as one concatenated group, large ones one by one; the group's pieces come
    first in the ``(num_pieces, D, D)`` Gram and ``(num_pieces, D)`` weight arrays.
    """

    pieces: tuple[LeafPieces, ...]

    @classmethod
    def of(cls, shapes: Sequence[Sequence[int]], *, granularity: str, num_slices: int,
           variant: str) -> PieceLayout:
        """The layout of leaves with parameter shapes ``shapes`` (without the domain axis)."""
        return cls(tuple(leaf_pieces(shape, granularity=granularity, num_slices=num_slices,
                                     variant=variant) for shape in shapes))

    @property
    def small(self) -> list[int]:
        return [k for k, p in enumerate(self.pieces) if p.size <= SMALL_LEAF]

    @property
    def large(self) -> list[int]:
        return [k for k, p in enumerate(self.pieces) if p.size > SMALL_LEAF]

    @property
    def num_pieces(self) -> int:
        return sum(p.num_pieces for p in self.pieces)

    @property
    def layer_of_piece(self) -> np.ndarray:
        """``(num_pieces,)``: the leaf (layer) index of every piece, in array order."""
        order = self.small + self.large
        return np.repeat(np.array(order, np.int32),
                         [self.pieces[k].num_pieces for k in order]).astype(np.int32)

    def gram(self, flats: Sequence[jax.Array]) -> jax.Array:
        """First pass: ``(num_pieces, D, D)`` Gram matrices of every piece of every leaf.

        Args:
          flats: ``(D, P_leaf)`` flattened per-domain gradients of every leaf.
        """
        small = self.small
        grams = self._large_grams(flats)
        if small:
            grams.insert(0, group_gram([flats[k] for k in small],
                                       [self.pieces[k] for k in small]))
        return jnp.concatenate(grams) if len(grams) > 1 else grams[0]

    def _large_grams(self, flats: Sequence[jax.Array]) -> list[jax.Array]:
        """The large leaves' ``(num_pieces, D, D)`` Gram matrices, in order, as arrays to
        concatenate. The blocked leaves' block sums are added up by piece in one segment
        sum for all of them: one kernel instead of a few per leaf, for the compile time."""
        large = self.large
        blocked = {k for k in large if self.pieces[k].blocked}
        if not blocked:  # element granularity, or pieces too short to block
            return [piece_gram(flats[k], self.pieces[k]) for k in large]
        starts = np.cumsum([0] + [self.pieces[k].num_pieces for k in large])
        sums = _segment_pair_sums(
            [_block_pair_sums(flats[k], self.pieces[k].block_plan(), int(start))
             for k, start in zip(large, starts[:-1], strict=True) if k in blocked],
            int(starts[-1]))
        joint = sums[:, _square_index(flats[large[0]].shape[0])]
        if len(blocked) == len(large):
            return [joint]
        # Leaves too short to block beside blocked ones (their rows of ``joint`` are 0).
        return [joint[a:b] if k in blocked else piece_gram(flats[k], self.pieces[k])
                for k, a, b in zip(large, starts[:-1], starts[1:], strict=True)]

    def combine(self, flats: Sequence[jax.Array], weights: jax.Array) -> list[jax.Array]:
        """Second pass: ``out^k = sum_m weights[k, m] g_m^k`` for every leaf, ``(P_leaf,)``
        each, from ``(num_pieces, D)`` weights in the order of :meth:`gram`."""
        small, large = self.small, self.large
        outputs: list[jax.Array] = [None] * len(self.pieces)  # type: ignore[list-item]
        start = sum(self.pieces[k].num_pieces for k in small)
        if small:
            combined = group_combine([flats[k] for k in small], weights[:start],
                                     [self.pieces[k] for k in small])
            for k, out in zip(small, combined, strict=True):
                outputs[k] = out
        for k in large:
            stop = start + self.pieces[k].num_pieces
            outputs[k] = combine_pieces(flats[k], weights[start:stop], self.pieces[k])
            start = stop
        return outputs


def group_gram(flats: list[jax.Array], pieces: list[LeafPieces]) -> jax.Array:
    """:func:`piece_gram` of many small leaves at once, ``(sum of num_pieces, D, D)``.

    The leaves are concatenated (a cheap copy, as they are small) and read in blocks of
    :data:`GROUP_BLOCK` elements, like one long leaf cut at the leaves' and pieces'
    boundaries (:class:`BlockPlan`): one fused kernel instead of a few per leaf, which
    keeps a ResNet's dozens of BatchNorm and bias leaves from dominating the compile
    time and the kernel launches. (A segment sum of every element's products took 20x
    longer: about 1.5 ms for ResNet18's 208k small-leaf parameters.)
    """
    num_domains = flats[0].shape[0]
    flat = jnp.concatenate(flats, axis=1)
    if all(p.piece_length == 1 for p in pieces):  # element granularity
        return _products(flat)[:, _square_index(num_domains)]
    bounds, count = _group_bounds(pieces)
    sums = _blocked_pair_sums(flat, BlockPlan.of(bounds, GROUP_BLOCK), count)
    return sums[:, _square_index(num_domains)]


def group_combine(
    flats: list[jax.Array], weights: jax.Array, pieces: list[LeafPieces]
) -> list[jax.Array]:
    """:func:`combine_pieces` of the leaves of :func:`group_gram`, one ``(P,)`` each."""
    flat = jnp.concatenate(flats, axis=1)
    bounds, _ = _group_bounds(pieces)
    out = blocked_combine(flat, weights, BlockPlan.of(bounds, GROUP_BLOCK))
    ends = np.cumsum([0] + [p.size for p in pieces])
    return [out[start:stop] for start, stop in zip(ends[:-1], ends[1:], strict=True)]


def _group_bounds(pieces: list[LeafPieces]) -> tuple[np.ndarray, int]:
    """Where every piece of the concatenated leaves starts, then their total size; and
    the number of pieces."""
    starts, offset = [], 0
    for p in pieces:
        starts.append(offset + p.bounds[:-1])
        offset += p.size
    return np.append(np.concatenate(starts), offset).astype(np.int64), sum(
        p.num_pieces for p in pieces)


def _square_index(num_domains: int) -> np.ndarray:
    """Indices that turn the D(D+1)/2 pair sums into a symmetric D x D matrix."""
    pair_index = {}
    pairs = ((a, b) for a in range(num_domains) for b in range(a, num_domains))
    for n, (a, b) in enumerate(pairs):
        pair_index[a, b] = pair_index[b, a] = n
    return np.array([[pair_index[a, b] for b in range(num_domains)]
                     for a in range(num_domains)])


def _weighted_sum(flat: jax.Array, weights: list[jax.Array]) -> jax.Array:
    """``sum_m weights[m] * flat[m]`` as explicit adds (``x.sum(0)`` is slow on XLA:CPU)."""
    out = weights[0] * flat[0]
    for m in range(1, flat.shape[0]):
        out = out + weights[m] * flat[m]
    return out
