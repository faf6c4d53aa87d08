"""CorGrad: layering, slicing, projection of conflicts, and smoothing of dominant gradients.

This file reads like the paper's Algorithm 1 (Zhou et al., ECAI 2024). Each step is a
named function:

1. *Layering and slicing* (Sec. 3.4, Fig. 1): :func:`~corgrad_jax._src.pieces.leaf_pieces`
   cuts each layer's per-domain gradient into pieces.
2. *Piece Gram matrices*: :func:`~corgrad_jax._src.pieces.piece_gram`, one pass over the
   data (docs/algorithm.md, Sec. 8).
3. *Projection of conflicting pieces* (Alg. 1, lines 3-7; eq. 13 with the squared norm):
   :func:`project_conflicts`, on coefficient arrays.
4. *Smoothing of dominant gradients* (Alg. 1, lines 8-11): :func:`smooth_dominant`.
5. *Sum over domains* (Alg. 1, line 12):
   :func:`~corgrad_jax._src.pieces.combine_pieces`, the second pass.

Every projected gradient stays a linear combination ``g~_i^k = sum_m c[k,i,m] g_m^k`` of
the original pieces, so steps 3 and 4 act on the coefficients ``c`` and on the Gram
matrices ``G^k`` only: ``<g~_i, g~_j> = c_i G c_j^T``. Steps 3 and 4 are CorGrad's *rule*
(:func:`corgrad_rule`); steps 1, 2 and 5 are the engine every Gram rule shares
(``_src/engine.py``). At element granularity a piece is one scalar and the projection
has a closed form (:func:`element_projection`), computed elementwise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from corgrad_jax._src import base
from corgrad_jax._src.engine import (
    GramRule,
    RuleInputs,
    RuleResult,
    check_gram_options,
    gram_transformation,
)
from corgrad_jax._src.pieces import element_sums

Coefficients = jax.Array
"""``coeffs[k, i, m]``: weight of domain m's original piece k in domain i's current piece.
Shape ``(num_pieces, D, D)``; the Gram matrices have the same shape."""

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


def dominant_mixing(
    norms: jax.Array, original_mu: jax.Array, alpha: jax.Array, *, two_sided: bool
) -> tuple[jax.Array, jax.Array]:
    """Which domains are dominant in each layer, as a mixing matrix per layer.

    With ``n_i`` the norm of domain i's projected gradient over the layer, ``mu = mean_i
    n_i`` and ``sigma`` the population standard deviation, domain i is dominant when
    ``n_i - mu > sigma`` (the paper) or ``|n_i - mu| > sigma`` (``two_sided``, the
    official code), by more than a slack of ``rtol * original_mu`` (ties and rounding
    residues are not dominant). A dominant gradient becomes ``alpha g_i + (1 - alpha)
    g_mean``, where ``g_mean`` is the mean over all domains (paper) or over the
    non-dominant ones (official): row i of the mixing matrix ``M`` gives the smoothed
    gradient ``sum_m M[i, m] g_m``.

    Args:
      norms: ``(layers, D)`` norms of the projected gradients.
      original_mu: ``(layers, 1)`` mean norm of the original gradients.
      alpha: the smoothing weight.
      two_sided: the official code's outlier test.

    Returns:
      ``(mixing, num_dominant)``: ``(layers, D, D)`` matrices and the number of (domain,
      layer) pairs smoothed.
    """
    dtype = jnp.dtype(norms.dtype)
    num_domains = norms.shape[-1]
    mu = norms.mean(-1, keepdims=True)
    sigma = jnp.sqrt(((norms - mu) ** 2).mean(-1, keepdims=True))
    deviation = jnp.abs(norms - mu) if two_sided else norms - mu
    dominant = deviation > sigma + _TIE_RTOL[dtype] * original_mu  # (layers, D)
    included = ~dominant if two_sided else jnp.ones_like(dominant)
    weight = included.astype(dtype)
    weight = weight / jnp.maximum(weight.sum(-1, keepdims=True), 1)
    alpha = jnp.asarray(alpha, dtype)
    eye = jnp.eye(num_domains, dtype=dtype)
    mixing = jnp.where(dominant[:, :, None], alpha * eye + (1 - alpha) * weight[:, None, :], eye)
    return mixing, dominant.sum(dtype=jnp.float32)


def smooth_dominant(
    coeffs: Coefficients,
    gram: jax.Array,
    layer_of_piece: np.ndarray,
    num_layers: int,
    alpha: jax.Array,
    *,
    two_sided: bool,
) -> tuple[Coefficients, jax.Array]:
    """Adaptive smoothing of dominant gradients (Alg. 1, lines 8-11), per layer, on
    coefficients: domain i's layer norm is ``sqrt(sum_k c_i^k G^k (c_i^k)^T)`` over the
    layer's pieces, and :func:`dominant_mixing` says who is smoothed toward what.

    Returns:
      The smoothed coefficients and the number of (domain, layer) pairs smoothed.
    """

    def layer_norm(piece_norm2: jax.Array) -> jax.Array:  # (K, D) -> (layers, D)
        total = jax.ops.segment_sum(piece_norm2, layer_of_piece, num_layers)
        return jnp.sqrt(jnp.maximum(total, 0))

    norms = layer_norm(_bilinear(coeffs, gram, coeffs))
    original_mu = layer_norm(jnp.diagonal(gram, axis1=1, axis2=2)).mean(-1, keepdims=True)
    mixing, num_dominant = dominant_mixing(norms, original_mu, alpha, two_sided=two_sided)
    smoothed = (mixing[layer_of_piece][:, :, :, None] * coeffs[:, None, :, :]).sum(2)
    return smoothed, num_dominant


def element_projection(values: list[jax.Array], *, sequential: bool
                       ) -> tuple[list[jax.Array], jax.Array]:
    """Projection of conflicting pieces at element granularity, in closed form.

    A one-element piece conflicts with another domain's when their signs differ, and the
    projection then empties it: :math:`g_i - (g_i g_j / g_j^2)\\, g_j = 0`. An emptied
    piece neither conflicts again nor serves as a direction (:func:`project_conflicts`).
    So in the paper's Jacobi order domain i keeps :math:`g_i` exactly when no other
    domain has the opposite sign, whatever the order; in the official Gauss-Seidel order
    domain i meets the already projected values of the domains j < i and the original
    ones of j > i. Each emptied piece counts one conflict, of ratio 1.

    Args:
      values: the D per-domain arrays (any common shape).
      sequential: the official code's Gauss-Seidel order.

    Returns:
      The D projected arrays and the number of emptied domains per element (int32).
    """
    num_domains = len(values)
    projected: list[jax.Array] = []
    emptied = jnp.zeros(values[0].shape, jnp.int32)
    if not sequential:
        positive = sum((v > 0).astype(jnp.int32) for v in values)
        negative = sum((v < 0).astype(jnp.int32) for v in values)
    for i, value in enumerate(values):
        if sequential:
            references = [projected[j] if j < i else values[j]
                          for j in range(num_domains) if j != i]
            conflict = value * references[0] < 0
            for reference in references[1:]:
                conflict = conflict | (value * reference < 0)
        else:
            conflict = ((value > 0) & (negative > 0)) | ((value < 0) & (positive > 0))
        projected.append(jnp.where(conflict, jnp.zeros_like(value), value))
        emptied = emptied + conflict.astype(jnp.int32)
    return projected, emptied


def corgrad_rule(alpha: AlphaLike, *, shuffle: bool, official: bool) -> GramRule:
    """CorGrad's projection and smoothing as a rule with per-domain coefficients; the
    engine (``_src/engine.py``) supplies layering, slicing and both passes."""

    def smoothing_weight(count: jax.Array) -> jax.Array:
        return alpha(count) if callable(alpha) else alpha

    def coefficients(gram: jax.Array, inputs: RuleInputs) -> RuleResult:
        assert inputs.piece_gram is not None
        num_domains = gram.shape[-1]
        # 3. Projection of conflicting pieces (one piece for the whole model at "model").
        orders = domain_orders(num_domains, inputs.key, shuffle=shuffle)
        coeffs, conflicts, ratio_sum = project_conflicts(gram, orders, sequential=official)
        tests = num_domains * (num_domains - 1) * gram.shape[0]
        coeffs = jnp.broadcast_to(coeffs, inputs.piece_gram.shape)
        # 4. Smoothing of dominant gradients, per layer.
        num_dominant = jnp.zeros((), jnp.float32)
        if alpha is not None:
            coeffs, num_dominant = smooth_dominant(
                coeffs, inputs.piece_gram, inputs.layer_of_piece, inputs.num_layers,
                smoothing_weight(inputs.count), two_sided=official)
        diagnostics = base.Diagnostics(
            modification_frequency=conflicts / max(tests, 1),
            modification_ratio=ratio_sum / jnp.maximum(conflicts, 1),
            dominant_fraction=num_dominant / (num_domains * inputs.num_layers),
        )
        return RuleResult(coeffs, diagnostics)

    def element(flats: list[jax.Array], inputs: RuleInputs
                ) -> tuple[list[jax.Array], base.Diagnostics, Any]:
        num_domains = flats[0].shape[0]

        def first_pass(values: list[jax.Array], others: list[jax.Array]) -> list[jax.Array]:
            del others
            projected, emptied = element_projection(values, sequential=official)
            return [emptied, *(p * p for p in projected), *(v * v for v in values)]

        # The first pass counts the conflicts and gives the layer norms; the second
        # recomputes the projection and writes the (smoothed) sum, cheaper than
        # storing D projected copies.
        sums = [element_sums(flat, first_pass) for flat in flats]
        conflicts = sum(s[0] for s in sums).astype(jnp.float32)
        weights = jnp.ones((len(flats), num_domains), flats[0].dtype)
        num_dominant = jnp.zeros((), jnp.float32)
        if alpha is not None:
            norms = jnp.sqrt(jnp.stack([jnp.stack(s[1:1 + num_domains]) for s in sums]))
            originals = jnp.sqrt(jnp.stack([jnp.stack(s[1 + num_domains:]) for s in sums]))
            mixing, num_dominant = dominant_mixing(
                norms, originals.mean(-1, keepdims=True), smoothing_weight(inputs.count),
                two_sided=official)
            weights = mixing.sum(1)  # (layers, D): sum_i M[i, m]
        outputs = []
        for k, flat in enumerate(flats):
            projected, _ = element_projection([flat[i] for i in range(num_domains)],
                                              sequential=official)
            out = projected[0] if alpha is None else weights[k, 0] * projected[0]
            for m in range(1, num_domains):
                out = out + (projected[m] if alpha is None else weights[k, m] * projected[m])
            outputs.append(out)
        tests = num_domains * (num_domains - 1) * sum(flat.shape[1] for flat in flats)
        diagnostics = base.Diagnostics(
            modification_frequency=conflicts / max(tests, 1),
            modification_ratio=jnp.where(conflicts > 0, 1.0, 0.0).astype(jnp.float32),
            dominant_fraction=num_dominant / (num_domains * len(flats)),
        )
        return outputs, diagnostics, ()

    return GramRule(coefficients, native_reduction="sum", element=element)


def _check_alpha(alpha: Any) -> None:
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
    """CorGrad's rule on the one engine: :func:`corgrad`, its ablations and :func:`pcgrad`."""
    check_gram_options(num_slices, granularity, reduction, variant)
    _check_alpha(alpha)
    rule = corgrad_rule(alpha, shuffle=shuffle, official=variant == "official")
    return gram_transformation(rule, granularity=granularity, num_slices=num_slices,
                               reduction=reduction, seed=seed, name=name, variant=variant)


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
        ``"element"`` (fine); docs/algorithm.md, Sec. 2.
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
