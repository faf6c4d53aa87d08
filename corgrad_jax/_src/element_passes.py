"""The element-granularity passes: sums of elementwise terms over a leaf, or over each
leaf of a concatenated group of small ones, in one blocked pass; and the group's
per-leaf weighted sum.

They serve the rules that work element by element (CorGrad's closed form, the element
forms of the Gram rules, the sign-agreement rules), as :mod:`~corgrad_jax._src.pieces`
serves the piece Gram matrices, and read the data in the same blocks
(:class:`~corgrad_jax._src.pieces.BlockPlan`): a reduction then keeps float32 errors
near those of a pairwise sum, and the small leaves compile as one kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from corgrad_jax._src.pieces import BLOCK, GROUP_BLOCK, BlockPlan, blocked_combine

Result = TypeVar("Result")


def element_sums(flat: jax.Array, terms: Callable[..., list[jax.Array]],
                 others: Sequence[jax.Array] = ()) -> list[jax.Array]:
    """Sums over the elements of a leaf of elementwise functions of its D values, in one
    pass: ``[sum_p t(g_1[p], ..., g_D[p]) for t in terms]``.

    Written like :func:`~corgrad_jax._src.pieces.piece_gram`: one variadic reduction
    over blocks of ``BLOCK`` elements of the ``(D, P)`` data (XLA:CPU fuses the row
    slices and the terms into it; a plain ``jnp.sum`` of a function of several rows
    first copied each row), then a sum over the blocks, and the short remainder apart.
    A single term is reduced as the two halves of each block: XLA:CPU (jax 0.10) sends a
    reduction of one output to a library call that copies its operand first, 3x slower
    here.

    Args:
      flat: ``(D, P)`` per-domain values.
      terms: ``terms(values, others)`` maps the D arrays of values and the matching
        parts of ``others`` (any common shape) to the arrays to sum (any dtypes).
      others: ``(P,)`` arrays read alongside, e.g. an update already written.

    Returns:
      One scalar per term.
    """
    num_domains, size = flat.shape
    full = size // BLOCK
    totals: list[jax.Array] | None = None
    if full:
        body = flat[:, :full * BLOCK].reshape(num_domains, full, BLOCK)
        values = terms([body[i] for i in range(num_domains)],
                       [o[:full * BLOCK].reshape(full, BLOCK) for o in others])
        single = len(values) == 1
        if single:  # two halves of each block: a reduction of one output is slower
            values = [values[0][:, :BLOCK // 2], values[0][:, BLOCK // 2:]]
        sums = lax.reduce(values, [jnp.zeros((), v.dtype) for v in values],
                          lambda acc, new: [x + y for x, y in zip(acc, new, strict=True)], (1,))
        totals = [(sums[0] + sums[1]).sum()] if single else [s.sum() for s in sums]
    if size > full * BLOCK or totals is None:
        tail = flat[:, full * BLOCK:]
        rest = [v.sum() for v in terms([tail[i] for i in range(num_domains)],
                                       [o[full * BLOCK:] for o in others])]
        totals = rest if totals is None else [a + b for a, b in zip(totals, rest, strict=True)]
    return totals


def unfused(fn: Callable[[jax.Array], Result], flat: jax.Array,
            after: jax.Array | None = None) -> Result:
    """``fn(flat)``, an elementwise function (to one array or a tuple of them), computed
    in a loop of its own on XLA:CPU, so that a reduction of it reads its result rather
    than recomputing it, and after ``after`` is known.

    XLA fuses an elementwise producer into the reduction that consumes it, and XLA:CPU
    runs a fused reduction one element at a time unless it may reassociate float sums
    (:func:`~corgrad_jax.compiler_options`): a closed form with divisions and selects
    then runs at scalar speed, several times its vectorized loop. XLA:CPU removes an
    ``optimization_barrier`` before it fuses, but it does not fuse across a
    conditional; so ``fn`` goes into both branches of one, whose predicate
    (``after == after``, false only where ``after`` is NaN, and then the other branch is
    the same) XLA cannot fold; ``after`` also orders the calls
    (:func:`unfused_in_turn`). On other platforms XLA fuses such reductions well, and
    ``fn(flat)`` is returned as it is (``lax.platform_dependent``).

    Args:
      fn: an elementwise function of the ``(D, P)`` array, to an array or a tuple of
        arrays; or a generator of random numbers from a key's data
        (:mod:`~corgrad_jax._src.draws`).
      flat: ``(D, P)``, or the key's data.
      after: a float scalar to wait for; None for ``flat``'s first element (XLA would
        fold a constant predicate). An empty ``flat`` is left to XLA.
    """
    if not flat.size:
        return fn(flat)
    wait = flat.reshape(-1)[0] if after is None else after

    def on_cpu(values: jax.Array) -> Result:
        return lax.cond(wait == wait, fn, fn, values)

    return lax.platform_dependent(flat, cpu=on_cpu, default=fn)


def unfused_in_turn(fns: Sequence[Callable[[jax.Array], jax.Array]],
                    flats: Sequence[jax.Array]) -> list[jax.Array]:
    """``[fn(flat) for fn, flat in zip(fns, flats)]``, each in a loop of its own
    (:func:`unfused`) that waits for the previous one's result.

    The leaves in turn were faster with reassociation than side by side (UPGrad at
    element granularity, D=3: 1.45x against 1.65x the floor), and only one call's
    temporaries are live at a time: XLA:CPU allocates them at every call, and 47 MB of
    them at once page-faulted on every call, as glibc maps blocks over 32 MB afresh.
    The first call waits for a value of its own data."""
    results: list[jax.Array] = []
    after = None
    for fn, flat in zip(fns, flats, strict=True):
        results.append(unfused(fn, flat, after))
        if results[-1].size:
            after = results[-1].reshape(-1)[0]
    return results


def segment_element_sums(flat: jax.Array, terms: Callable[..., list[jax.Array]],
                         bounds: np.ndarray) -> list[jax.Array]:
    """:func:`element_sums` of every segment ``[bounds[s], bounds[s + 1])`` of a flat
    ``(D, P)`` array, such as the concatenated small leaves: ``(num_segments,)`` per term.

    Read like :func:`~corgrad_jax._src.pieces.group_gram`: one variadic reduction over
    blocks of ``GROUP_BLOCK`` elements, a segment sum of the block sums, and the
    elements of blocks that straddle two segments apart. One fused kernel for all the
    segments, where :func:`element_sums` compiles a few per segment.

    Args:
      flat: ``(D, P)`` per-domain values.
      terms: as for :func:`element_sums`, called with no ``others``.
      bounds: ``(num_segments + 1,)`` nondecreasing, from 0 to P.
    """
    num_domains, size = flat.shape
    num_segments = len(bounds) - 1
    plan = BlockPlan.of(np.asarray(bounds), GROUP_BLOCK)
    prefix = plan.num_blocks * plan.block
    body = flat[:, :prefix].reshape(num_domains, plan.num_blocks, plan.block)
    values = terms([body[i] for i in range(num_domains)], [])
    block_sums = lax.reduce(values, [jnp.zeros((), v.dtype) for v in values],
                            lambda acc, new: [x + y for x, y in zip(acc, new, strict=True)],
                            (1,))
    regular = jnp.asarray(plan.regular)
    totals = [jax.ops.segment_sum(jnp.where(regular, s, 0), plan.piece_of_block, num_segments,
                                  indices_are_sorted=True) for s in block_sums]
    if plan.irregular.size:
        loose = terms([flat[i, plan.irregular] for i in range(num_domains)], [])
        totals = [total + jax.ops.segment_sum(v, plan.piece_of_irregular, num_segments,
                                              indices_are_sorted=True)
                  for total, v in zip(totals, loose, strict=True)]
    return totals


def segment_combine(flat: jax.Array, weights: jax.Array, bounds: np.ndarray) -> jax.Array:
    """``out[p] = sum_m weights[s, m] flat[m, p]`` for p in segment s (cut at ``bounds``,
    as in :func:`segment_element_sums`), read in blocks as
    :func:`~corgrad_jax._src.pieces.group_combine` reads them.

    Args:
      flat: ``(D, P)`` values.
      weights: ``(num_segments, D)``.
      bounds: ``(num_segments + 1,)`` nondecreasing, from 0 to P.
    """
    return blocked_combine(flat, weights, BlockPlan.of(np.asarray(bounds), GROUP_BLOCK))
