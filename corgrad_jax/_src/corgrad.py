"""CorGrad: layering, slicing, projection of conflicts, and smoothing of dominant gradients.

This file reads like the paper's Algorithm 1 (Zhou et al., ECAI 2024). Each step is a
named function:

1. *Layering and slicing* (Sec. 3.4, Fig. 1): :func:`~corgrad_jax._src.pieces.leaf_pieces`
   cuts each layer's per-domain gradient into pieces.
2. *Piece Gram matrices*: :func:`~corgrad_jax._src.pieces.piece_gram`, one pass over the
   data (SPEC, "A cheaper way to compute the same thing").
3. *Projection of conflicting pieces* (Alg. 1, lines 3-7; eq. 13 with the squared norm):
   :func:`project_conflicts`, on coefficient arrays.
4. *Smoothing of dominant gradients* (Alg. 1, lines 8-11): :func:`smooth_dominant`.
5. *Sum over domains* (Alg. 1, line 12):
   :func:`~corgrad_jax._src.pieces.combine_pieces`, the second pass.

Every projected gradient stays a linear combination ``g~_i^k = sum_m c[k,i,m] g_m^k`` of
the original pieces, so steps 3 and 4 act on the coefficients ``c`` and on the Gram
matrices ``G^k`` only: ``<g~_i, g~_j> = c_i G c_j^T``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from corgrad_jax._src import base
from corgrad_jax._src.pieces import (
    GRANULARITIES,
    SMALL_LEAF,
    VARIANTS,
    LeafPieces,
    combine_pieces,
    group_combine,
    group_gram,
    leaf_pieces,
    piece_gram,
)

Coefficients = jax.Array
"""``coeffs[k, i, m]``: weight of domain m's original piece k in domain i's current piece.
Shape ``(num_pieces, D, D)``; the Gram matrices have the same shape."""

REDUCTIONS = ("sum", "mean")

# Dominance ties (|n_i - mu| == sigma, which is exact for D = 2) are not dominant: the
# test allows this slack, relative to the layer's mean original gradient norm. A norm
# computed from Gram matrices, sqrt(c G c^T), carries an absolute error of about
# sqrt(machine eps) times the original norm, hence the size of the slack.
_TIE_RTOL = {jnp.dtype(jnp.float32): 1e-3, jnp.dtype(jnp.float64): 1e-7}
# Conflicts are inner products below -eps times the original norms (project_conflicts).
_CONFLICT_EPS = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.float64): 1e-12}

AlphaLike = float | optax.Schedule | jax.Array | None


def _bilinear(u: jax.Array, gram: jax.Array, v: jax.Array) -> jax.Array:
    """``u G v^T`` per piece and domain: ``u, v`` are ``(K, D', D)``, ``gram`` ``(K, D, D)``.

    The inner product of two combinations of the original pieces. Written as
    broadcasts and sums over the short minor axis, which fuse on every backend.
    """
    gv = (gram[:, None, :, :] * v[:, :, None, :]).sum(-1)  # (K, D', D)
    return (u * gv).sum(-1)


def domain_orders(num_domains: int, key: jax.Array, *, shuffle: bool) -> jax.Array:
    """For every domain i, the order in which it meets the other domains, one-hot.

    Returns ``(D - 1, D, D)``: entry ``[s, i]`` is the unit vector of the s-th domain that
    domain i projects against. With ``shuffle`` each i gets its own random permutation of
    the other domains, drawn anew every step (Alg. 1, line 4); without, ascending order.
    """
    others = np.array([[j for j in range(num_domains) if j != i] for i in range(num_domains)])
    if not shuffle:
        return jnp.asarray(np.eye(num_domains)[others.T])
    keys = jax.random.split(key, num_domains)
    order = jnp.stack([jnp.asarray(others[i])[jax.random.permutation(keys[i], num_domains - 1)]
                       for i in range(num_domains)])
    return jax.nn.one_hot(order.T, num_domains)


def project_conflicts(
    gram: jax.Array, orders: jax.Array, *, sequential: bool
) -> tuple[Coefficients, jax.Array, jax.Array]:
    """Projection of conflicting pieces (Alg. 1, lines 3-7), on coefficients.

    For every domain i, for every other domain j in ``orders``, for every piece k:

    .. math::  \\text{if } \\langle g_i^k, g_j^k\\rangle < 0:\\quad
        g_i^k \\leftarrow g_i^k - \\frac{\\langle g_i^k, g_j^k\\rangle}{\\|g_j^k\\|^2}\\, g_j^k

    (the paper's eq. 13 divides by ``||g_j||``, a typo). ``g_j`` is domain j's original
    piece (PCGrad's Jacobi order, the paper: all domains advance together, D - 1 steps);
    with ``sequential`` it is domain j's current piece, already projected when j < i
    (the official code's in-place loop, D (D - 1) steps).

    A piece whose reference is all zero is never projected. Numerically, "zero" is
    relative to the original norms: a reference shorter than ``rtol ||g_j original||`` is
    zero (rtol = 1e-3 in float32, 1e-7 in float64) and a conflict needs
    ``<g_i, g_j> < -eps ||g_i original|| ||g_j original||`` (eps = 1e-5; 1e-12), so the
    rounding residue of a piece an earlier projection emptied (a 1-element piece, say)
    neither counts as a conflict nor serves as a direction.

    Args:
      gram: ``(K, D, D)`` piece Gram matrices.
      orders: ``(D - 1, D, D)`` one-hot orders from :func:`domain_orders`.
      sequential: Gauss-Seidel (official) instead of Jacobi (paper) projections.

    Returns:
      ``(coeffs, conflicts, ratio_sum)``: the ``(K, D, D)`` coefficients of the projected
      gradients, the number of negative inner products among the ``K D (D - 1)`` tests,
      and the sum over the modified tests of ``||removed|| / ||g_i^k before||``.
    """
    num_pieces, num_domains, _ = gram.shape
    dtype = jnp.dtype(gram.dtype)
    eps, rtol = _CONFLICT_EPS[dtype], _TIE_RTOL[dtype]
    original2 = jnp.diagonal(gram, axis1=1, axis2=2)  # (K, D): ||g_i^k||^2
    coeffs = jnp.broadcast_to(jnp.eye(num_domains, dtype=dtype), gram.shape)
    conflicts = jnp.zeros((), jnp.float32)
    ratio_sum = jnp.zeros((), jnp.float32)

    def project(current: jax.Array, reference: jax.Array, onehot: jax.Array,
                rows: jax.Array) -> jax.Array:
        nonlocal conflicts, ratio_sum
        inner = _bilinear(current, gram, reference)
        reference2 = _bilinear(reference, gram, reference)
        current2 = _bilinear(current, gram, current)
        original_i2 = (original2[:, None, :] * rows).sum(-1)
        original_j2 = (original2[:, None, :] * onehot).sum(-1)
        nonzero = reference2 > rtol**2 * original_j2
        conflict = (inner < -eps * jnp.sqrt(original_i2 * original_j2)) & nonzero
        safe_reference2 = jnp.where(conflict, reference2, 1)
        step = jnp.where(conflict, inner / safe_reference2, 0)
        # Modification ratio, as the official code logs it: ||removed|| / ||g_i before||
        # with ||removed|| = |<g_i, g_j>| / ||g_j||.
        ratio = jnp.abs(inner) / jnp.sqrt(safe_reference2 * jnp.where(conflict, current2, 1))
        conflicts = conflicts + conflict.sum(dtype=jnp.float32)
        ratio_sum = ratio_sum + jnp.where(conflict & (current2 > 0), ratio, 0).sum(
            dtype=jnp.float32)
        return current - step[..., None] * reference

    eye = jnp.eye(num_domains, dtype=dtype)
    if not sequential:  # all domains advance together against original pieces
        for onehot in orders:  # (D, D): row i is e_{j_i(s)}
            reference = jnp.broadcast_to(onehot.astype(dtype), gram.shape)
            coeffs = project(coeffs, reference, onehot.astype(dtype)[None], eye[None])
    else:
        for i in range(num_domains):
            for onehot in orders[:, i]:  # (D,): e_{j_i(s)}
                reference = (onehot.astype(dtype)[None, :, None] * coeffs).sum(1)  # (K, D)
                current = project(coeffs[:, i:i + 1], reference[:, None],
                                  onehot.astype(dtype)[None, None], eye[i][None, None])
                coeffs = coeffs.at[:, i].set(current[:, 0])
    return coeffs, conflicts, ratio_sum


def smooth_dominant(
    coeffs: Coefficients,
    gram: jax.Array,
    layer_of_piece: np.ndarray,
    num_layers: int,
    alpha: jax.Array,
    *,
    two_sided: bool,
) -> tuple[Coefficients, jax.Array]:
    """Adaptive smoothing of dominant gradients (Alg. 1, lines 8-11), per layer.

    With ``n_i = ||g~_i||`` over the whole layer, ``mu = mean_i n_i`` and ``sigma`` the
    population standard deviation, domain i is dominant when ``n_i - mu > sigma`` (the
    paper) or ``|n_i - mu| > sigma`` (``two_sided``, the official code). A dominant
    gradient becomes ``alpha g~_i + (1 - alpha) g_mean``, where ``g_mean`` is the mean
    over all domains (paper) or over the non-dominant ones (official).

    Returns:
      The smoothed coefficients and the number of (domain, layer) pairs smoothed.
    """
    dtype = jnp.dtype(gram.dtype)

    def layer_norm(piece_norm2: jax.Array) -> jax.Array:  # (K, D) -> (layers, D)
        total = jax.ops.segment_sum(piece_norm2, layer_of_piece, num_layers)
        return jnp.sqrt(jnp.maximum(total, 0))

    norms = layer_norm(_bilinear(coeffs, gram, coeffs))
    mu = norms.mean(-1, keepdims=True)
    sigma = jnp.sqrt(((norms - mu) ** 2).mean(-1, keepdims=True))
    # Ties and rounding residues (a layer the projections emptied) are not dominant.
    original_mu = layer_norm(jnp.diagonal(gram, axis1=1, axis2=2)).mean(-1, keepdims=True)
    deviation = jnp.abs(norms - mu) if two_sided else norms - mu
    dominant = deviation > sigma + _TIE_RTOL[dtype] * original_mu  # (layers, D)
    included = ~dominant if two_sided else jnp.ones_like(dominant)
    weight = included.astype(dtype)
    weight = weight / jnp.maximum(weight.sum(-1, keepdims=True), 1)
    mean = (weight[layer_of_piece][:, :, None] * coeffs).sum(1)  # (K, D)
    alpha = jnp.asarray(alpha, dtype)
    smoothed = jnp.where(dominant[layer_of_piece][:, :, None],
                         alpha * coeffs + (1 - alpha) * mean[:, None, :], coeffs)
    return smoothed, dominant.sum(dtype=jnp.float32)


def _check_options(
    num_slices: Any, alpha: Any, granularity: str, reduction: str, variant: str
) -> None:
    if isinstance(num_slices, bool) or not isinstance(num_slices, (int, np.integer)):
        raise TypeError(f"num_slices must be an int >= 1, got {num_slices!r}.")
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}.")
    if granularity not in GRANULARITIES:
        raise ValueError(f"Unknown granularity {granularity!r}; expected one of {GRANULARITIES}.")
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; expected one of {VARIANTS}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown reduction {reduction!r}; expected one of {REDUCTIONS}.")
    if alpha is None or callable(alpha):
        return
    try:
        value = float(alpha)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # a traced value, e.g. from optax.inject_hyperparams: checked by its source
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (or be a schedule or None), got {alpha}.")


def gradient_surgery(
    num_slices: int,
    alpha: AlphaLike,
    *,
    granularity: str,
    shuffle: bool,
    seed: int,
    reduction: str,
    variant: str,
    name: str,
) -> optax.GradientTransformationExtraArgs:
    """The one engine behind :func:`corgrad`, its ablations and :func:`pcgrad`."""
    _check_options(num_slices, alpha, granularity, reduction, variant)
    official = variant == "official"

    def aggregate(
        leaves: Sequence[jax.Array], state: base.StackedGradientState, key: jax.Array
    ) -> tuple[list[jax.Array], base.Diagnostics]:
        num_domains = leaves[0].shape[0]
        # 1. Layering and slicing.
        pieces: list[LeafPieces] = [
            leaf_pieces(leaf.shape[1:], granularity=granularity, num_slices=num_slices,
                        variant=variant)
            for leaf in leaves
        ]
        flats = [leaf.reshape(num_domains, -1) for leaf in leaves]
        # Small leaves are handled as one group, large ones one by one; the pieces of
        # the group come first in the coefficient arrays.
        small = [k for k, p in enumerate(pieces) if p.size <= SMALL_LEAF]
        large = [k for k, p in enumerate(pieces) if p.size > SMALL_LEAF]
        order = small + large
        # 2. Piece Gram matrices: the first pass over the data.
        grams = [piece_gram(flats[k], pieces[k]) for k in large]
        if small:
            grams.insert(0, group_gram([flats[k] for k in small], [pieces[k] for k in small]))
        gram = jnp.concatenate(grams) if len(grams) > 1 else grams[0]
        layer_of_piece = np.repeat(np.array(order), [pieces[k].num_pieces for k in order])
        # 3. Projection of conflicting pieces.
        orders = domain_orders(num_domains, key, shuffle=shuffle)
        if granularity == "model":  # one piece: the whole model
            coeffs, conflicts, ratio_sum = project_conflicts(
                gram.sum(0, keepdims=True), orders, sequential=official)
            coeffs = jnp.broadcast_to(coeffs, gram.shape)
            tests = num_domains * (num_domains - 1)
        else:
            coeffs, conflicts, ratio_sum = project_conflicts(gram, orders, sequential=official)
            tests = num_domains * (num_domains - 1) * gram.shape[0]
        # 4. Smoothing of dominant gradients.
        num_dominant = jnp.zeros((), jnp.float32)
        if alpha is not None:
            alpha_now = alpha(state.count) if callable(alpha) else alpha
            coeffs, num_dominant = smooth_dominant(
                coeffs, gram, layer_of_piece, len(leaves), alpha_now, two_sided=official)
        # 5. Sum over domains: the second pass over the data.
        weights = coeffs.sum(1)  # (K, D): sum_i c[k, i, m]
        if reduction == "mean":
            weights = weights / num_domains
        outputs: list[jax.Array] = [None] * len(leaves)  # type: ignore[list-item]
        start = sum(pieces[k].num_pieces for k in small)
        if small:
            combined = group_combine([flats[k] for k in small], weights[:start],
                                     [pieces[k] for k in small])
            for k, out in zip(small, combined, strict=True):
                outputs[k] = out.reshape(leaves[k].shape[1:])
        for k in large:
            leaf_weights = weights[start:start + pieces[k].num_pieces]
            start += pieces[k].num_pieces
            outputs[k] = combine_pieces(flats[k], leaf_weights, pieces[k]).reshape(
                leaves[k].shape[1:])
        diagnostics = base.Diagnostics(
            modification_frequency=conflicts / max(tests, 1),
            modification_ratio=ratio_sum / jnp.maximum(conflicts, 1),
            dominant_fraction=num_dominant / (num_domains * len(leaves)),
        )
        return outputs, diagnostics

    return base.stacked_transformation(aggregate, seed=seed, name=name)


def corgrad(
    num_slices: int = 10,
    alpha: AlphaLike = 0.6,
    *,
    granularity: str = "slice",
    shuffle: bool | None = None,
    seed: int = 0,
    reduction: str = "sum",
    variant: str = "paper",
) -> optax.GradientTransformationExtraArgs:
    r"""CorGrad: correct conflicting per-domain gradients slice by slice, then smooth.

    Takes per-domain gradients stacked on a leading axis, every leaf shaped
    ``(D, *param_shape)`` (D >= 2, the same for every leaf), and returns one param-shaped
    update. Each leaf is a layer; it is cut into pieces (``granularity``), and within each
    piece k every domain i removes its components that conflict with the others
    (Alg. 1, lines 3-7; eq. 13 with the squared norm):

    .. math::
        g_i^k \leftarrow g_i^k - \frac{\langle g_i^k, g_j^k\rangle}{\|g_j^k\|^2} g_j^k
        \quad\text{if } \langle g_i^k, g_j^k\rangle < 0 .

    Then, per layer, a domain whose projected gradient norm :math:`n_i` is dominant,
    :math:`n_i - \mu > \sigma`, is smoothed toward the mean (Alg. 1, lines 8-11):
    :math:`g_i \leftarrow \alpha g_i + (1 - \alpha) \bar g`. The update is
    :math:`\sum_i g_i` (``reduction="sum"``, as paper and official code) or the mean.

    It must come first in a chain, where the stacked gradients enter::

        tx = optax.chain(corgrad(num_slices=10, alpha=0.6), optax.adam(1e-3))

    Non-finite input: a NaN or Inf in a domain's gradient makes the inner products of
    its pieces non-finite; a NaN test is not a conflict, so the gradients pass through
    unprojected and the NaN/Inf reaches the output of (at least) that leaf. Nothing is
    silently zeroed. To skip such steps, guard what follows corgrad (whose input is the
    param-shaped update): ``optax.chain(corgrad(), optax.apply_if_finite(adam, 3))``.

    Args:
      num_slices: slices per layer for ``granularity="slice"`` (``n`` in the paper; 10 in
        its experiments). Layers with fewer elements use one slice per element.
      alpha: smoothing weight of a dominant gradient: a float in [0, 1], an optax
        schedule of the step (e.g. :func:`log_decay_schedule`), or None for no
        smoothing. Injectable with :func:`optax.inject_hyperparams`.
      granularity: ``"model"`` (PCGrad, coarse), ``"layer"``, ``"slice"`` (CorGrad) or
        ``"element"`` (fine), the SPEC's table.
      shuffle: visit the other domains in a random order, drawn every step from a key
        kept in the state (so it works under Flax's ``TrainState.apply_gradients``).
        None means the variant's own choice: True for ``"paper"``, False (ascending) for
        ``"official"``.
      seed: seed of that key.
      reduction: ``"sum"`` or ``"mean"`` over domains.
      variant: ``"paper"`` (Algorithm 1, PCGrad's Jacobi projections, one-sided
        dominance, mean over all domains) or ``"official"``, which reproduces
        ``correct_grad`` of the official PyTorch code for leaves in PyTorch layout:
        ``torch.chunk`` along axis 0, in-place (Gauss-Seidel) projections, two-sided
        outliers smoothed toward the mean of the non-outliers.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`. Its state holds the last step's
      ``modification_frequency``, ``modification_ratio`` and ``dominant_fraction``, read
      with :func:`optax.tree_utils.tree_get`.

    Raises:
      ValueError / TypeError: on bad options here, and on bad gradients at ``update``
        (unstacked or integer leaves, D < 2, unequal D), naming the leaf.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from corgrad_jax import corgrad
      >>> params = {"w": jnp.zeros(4)}
      >>> grads = {"w": jnp.array([[1., 2., 1., -1.],    # domain 1
      ...                          [-1., 1., -1., 1.]])}  # domain 2: conflicts in slice 2
      >>> tx = optax.chain(corgrad(num_slices=2, alpha=None), optax.sgd(1.0))
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["w"].tolist()  # sgd negates; the conflicting slice cancels out
      [-0.0, -3.0, -0.0, -0.0]
      >>> float(optax.tree_utils.tree_get(state, "modification_frequency"))
      0.5

    References:
      Zhou, Hu, Zhou, Guan, Jiang. Rethinking Domain Generalization from Perspective of
      Gradient Granularity. ECAI 2024. Algorithm 1; eqs. (3), (13).
    """
    if shuffle is None:
        shuffle = variant != "official"
    return gradient_surgery(
        num_slices, alpha, granularity=granularity, shuffle=shuffle, seed=seed,
        reduction=reduction, variant=variant, name="corgrad")


def pcgrad(
    *, shuffle: bool = True, seed: int = 0, reduction: str = "sum"
) -> optax.GradientTransformationExtraArgs:
    r"""PCGrad on the whole model: the paper's coarse-grained baseline.

    All leaves form one vector per domain; each domain removes the components that
    conflict with the other domains' original gradients, in a random order, and the
    results are summed (Yu et al. 2020; the official ``pcgrad``). Equal to
    ``corgrad(granularity="model", alpha=None)``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from corgrad_jax import pcgrad
      >>> g = {"w": jnp.array([[1., 0.], [-1., 1.]])}
      >>> tx = pcgrad(shuffle=False)
      >>> tx.update(g, tx.init(None))[0]["w"]
      Array([0.5, 1.5], dtype=float32)

    References:
      Yu et al. Gradient Surgery for Multi-Task Learning. NeurIPS 2020.
    """
    return gradient_surgery(
        1, None, granularity="model", shuffle=shuffle, seed=seed, reduction=reduction,
        variant="paper", name="pcgrad")


def log_decay_schedule(init_value: float, total_steps: int) -> optax.Schedule:
    r"""The paper's decay of ``alpha``: :math:`\alpha_t = \alpha_0 (1 - \log(t+1)/\log T)`,
    clipped at 0 (the official ``AlphaSheduler``, which its training loop never used).

    Example:
      >>> from corgrad_jax import log_decay_schedule
      >>> schedule = log_decay_schedule(0.6, 100)
      >>> [round(float(schedule(t)), 3) for t in (0, 9, 99)]
      [0.6, 0.3, 0.0]
    """
    if not 0.0 <= init_value <= 1.0:
        raise ValueError(f"init_value must lie in [0, 1], got {init_value}.")
    if total_steps < 2:
        raise ValueError(f"total_steps must be >= 2 (log T > 0), got {total_steps}.")
    log_total = float(np.log(total_steps))

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.float32)
        return jnp.clip(init_value * (1.0 - jnp.log1p(t) / log_total), 0.0, init_value)

    return schedule
