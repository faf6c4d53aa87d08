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
    VARIANTS,
    Gram,
    LeafPieces,
    combine_pieces,
    leaf_pieces,
    piece_gram,
)

Coefficients = list[list[jax.Array]]
"""``coeffs[i][m]``, shape ``(num_pieces,)``: weight of domain m's original piece in the
current gradient of domain i."""

REDUCTIONS = ("sum", "mean")

# Dominance ties (|n_i - mu| == sigma, which is exact for D = 2) are not dominant: the
# test allows this slack, relative to the layer's mean original gradient norm. A norm
# computed from Gram matrices, sqrt(c G c^T), carries an absolute error of about
# sqrt(machine eps) times the original norm, hence the size of the slack.
_TIE_RTOL = {jnp.dtype(jnp.float32): 1e-3, jnp.dtype(jnp.float64): 1e-7}

# Conflicts are cosines below -eps (see project_conflicts).
_CONFLICT_EPS = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.float64): 1e-12}

AlphaLike = float | optax.Schedule | jax.Array | None


def _times(coefficient: Any, value: Any) -> Any:
    """``coefficient * value``, skipping Python-number zeros and ones (static one-hots)."""
    if isinstance(coefficient, float):
        if coefficient == 0.0 or value is None:
            return None
        if coefficient == 1.0:
            return value
    return None if value is None else coefficient * value


def _plus(total: Any, term: Any) -> Any:
    return term if total is None else total if term is None else total + term


def _quadratic(u: Sequence[Any], gram: Gram, v: Sequence[Any]) -> jax.Array:
    """``u G v^T`` for every piece: the inner product of two combinations of pieces."""
    num_domains = len(gram)
    total = None
    for a in range(num_domains):
        gv = None
        for b in range(num_domains):
            gv = _plus(gv, _times(v[b], gram[a][b]))
        total = _plus(total, _times(u[a], gv))
    return jnp.zeros_like(gram[0][0]) if total is None else total


def domain_orders(num_domains: int, key: jax.Array, *, shuffle: bool) -> list[list[Any]]:
    """For every domain i, the order in which it meets the other domains, as one-hots.

    Returns ``onehot[i][s][n]``: 1 when the s-th domain domain i projects against is n.
    With ``shuffle`` each i gets its own random permutation of the other domains, drawn
    anew every step (Alg. 1, line 4); without, ascending order (plain Python numbers, so
    XLA folds them away).
    """
    others = [[j for j in range(num_domains) if j != i] for i in range(num_domains)]
    if not shuffle:
        return [[[1.0 if n == j else 0.0 for n in range(num_domains)] for j in row]
                for row in others]
    keys = jax.random.split(key, num_domains)
    onehots = []
    for i in range(num_domains):
        order = jnp.asarray(others[i])[jax.random.permutation(keys[i], num_domains - 1)]
        hot = jax.nn.one_hot(order, num_domains)
        onehots.append([[hot[s, n] for n in range(num_domains)] for s in range(num_domains - 1)])
    return onehots


def project_conflicts(
    gram: Gram, onehots: list[list[Any]], *, sequential: bool
) -> tuple[Coefficients, jax.Array, jax.Array, jax.Array]:
    """Projection of conflicting pieces (Alg. 1, lines 3-7), on coefficients.

    For every domain i, for every other domain j in ``onehots``' order, for every piece k:

    .. math::  \\text{if } \\langle g_i^k, g_j^k\\rangle < 0:\\quad
        g_i^k \\leftarrow g_i^k - \\frac{\\langle g_i^k, g_j^k\\rangle}{\\|g_j^k\\|^2}\\, g_j^k

    (the paper's eq. 13 divides by ``||g_j||``, a typo). ``g_j`` is domain j's original
    piece (PCGrad's Jacobi order, the paper); with ``sequential`` it is domain j's
    current piece, already projected when j < i (the official code's in-place loop). A
    piece whose reference is all zero is never projected. Numerically, "zero" is relative
    to the original norms: a reference shorter than ``rtol ||g_j original||`` is zero
    (rtol = 1e-3 in float32, 1e-7 in float64) and a conflict needs
    ``<g_i, g_j> < -eps ||g_i original|| ||g_j original||`` (eps = 1e-5; 1e-12), so the
    rounding residue of a piece an earlier projection emptied (a 1-element piece, say)
    neither counts as a conflict nor serves as a direction.

    Returns:
      ``(coeffs, tests, conflicts, ratio_sum)``: the coefficients of the projected
      gradients, the number of conflict tests, the number of negative inner products,
      and the sum over the modified tests of ``||removed|| / ||g_i^k before||``.
    """
    num_domains = len(gram)
    template = gram[0][0]
    zero, one = jnp.zeros_like(template), jnp.ones_like(template)
    coeffs: Coefficients = [[one if m == i else zero for m in range(num_domains)]
                            for i in range(num_domains)]
    conflicts = jnp.zeros((), jnp.float32)
    ratio_sum = jnp.zeros((), jnp.float32)
    for i in range(num_domains):
        for onehot in onehots[i]:
            static = all(isinstance(h, float) for h in onehot)
            if sequential and static:  # reference: domain j's current coefficients
                reference = coeffs[onehot.index(1.0)]
            elif sequential:
                reference = [sum(onehot[n] * coeffs[n][m] for n in range(num_domains))
                             for m in range(num_domains)]
            else:  # reference: domain j's original piece, the unit vector e_j
                reference = onehot
            inner = _quadratic(coeffs[i], gram, reference)
            reference_norm2 = _quadratic(reference, gram, reference)
            current_norm2 = _quadratic(coeffs[i], gram, coeffs[i])
            # What an earlier projection left of a piece that is zero in exact arithmetic
            # is a rounding residue: neither a reference nor a conflict. Both tests are
            # relative to the original norms, the scale of the Gram matrices' errors.
            original_j2 = _quadratic(onehot, gram, onehot)
            eps = _CONFLICT_EPS[inner.dtype]
            nonzero = reference_norm2 > _TIE_RTOL[inner.dtype] ** 2 * original_j2
            scale = jnp.sqrt(jnp.maximum(gram[i][i] * original_j2, 0))
            conflict = (inner < -eps * scale) & (reference_norm2 > 0) & nonzero
            step = jnp.where(conflict, inner / jnp.where(conflict, reference_norm2, 1), 0)
            # Modification ratio, as the official code logs it: |<g_i,g_j>| / ||g_j||
            # over ||g_i|| before the projection.
            removed = jnp.abs(inner) / jnp.sqrt(jnp.where(conflict, reference_norm2, 1))
            ratio = removed / jnp.sqrt(jnp.where(conflict, jnp.maximum(current_norm2, 0), 1))
            ratio = jnp.where(conflict & (current_norm2 > 0), ratio, 0)
            conflicts = conflicts + conflict.sum(dtype=jnp.float32)
            ratio_sum = ratio_sum + ratio.sum(dtype=jnp.float32)
            coeffs[i] = [
                c if (t := _times(reference[m], step)) is None else c - t
                for m, c in enumerate(coeffs[i])
            ]
    tests = jnp.asarray(num_domains * (num_domains - 1) * template.size, jnp.float32)
    return coeffs, tests, conflicts, ratio_sum


def smooth_dominant(
    coeffs: Coefficients,
    gram: Gram,
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
    num_domains = len(gram)

    def layer_norm(piece_norm2: jax.Array) -> jax.Array:
        total = jax.ops.segment_sum(piece_norm2, layer_of_piece, num_layers,
                                    indices_are_sorted=True)
        return jnp.sqrt(jnp.maximum(total, 0))

    norms = [layer_norm(_quadratic(coeffs[i], gram, coeffs[i])) for i in range(num_domains)]
    mu = sum(norms) / num_domains
    sigma = jnp.sqrt(sum((n - mu) ** 2 for n in norms) / num_domains)
    # Ties and rounding residues (a layer the projections emptied) are not dominant: the
    # test allows a slack relative to the layer's original gradient norms.
    original_mu = sum(layer_norm(gram[i][i]) for i in range(num_domains)) / num_domains
    slack = _TIE_RTOL[jnp.dtype(mu.dtype)] * original_mu
    deviations = [jnp.abs(n - mu) if two_sided else n - mu for n in norms]
    dominant = [dev > sigma + slack for dev in deviations]  # (num_layers,) each
    if two_sided:
        included = [~d for d in dominant]
    else:
        included = [jnp.ones_like(d) for d in dominant]
    count = jnp.maximum(sum(inc.astype(mu.dtype) for inc in included), 1)
    # Expand the per-layer decisions to the pieces.
    dominant_pieces = [d[layer_of_piece] for d in dominant]
    weight = [(inc.astype(mu.dtype) / count)[layer_of_piece] for inc in included]
    mean = [sum(weight[i] * coeffs[i][m] for i in range(num_domains))
            for m in range(num_domains)]
    alpha = jnp.asarray(alpha, mu.dtype)
    smoothed = [
        [jnp.where(dominant_pieces[i], alpha * coeffs[i][m] + (1 - alpha) * mean[m],
                   coeffs[i][m]) for m in range(num_domains)]
        for i in range(num_domains)
    ]
    num_dominant = sum(d.sum(dtype=jnp.float32) for d in dominant)
    return smoothed, num_dominant


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
        # 2. Piece Gram matrices: the first pass over the data.
        leaf_grams = [piece_gram(flat, p) for flat, p in zip(flats, pieces, strict=True)]
        gram = _concatenate_grams(leaf_grams)
        layer_of_piece = np.repeat(np.arange(len(leaves)), [p.num_pieces for p in pieces])
        # 3. Projection of conflicting pieces.
        onehots = domain_orders(num_domains, key, shuffle=shuffle)
        if granularity == "model":  # one piece: the whole model
            model_gram = [[g.sum(keepdims=True) for g in row] for row in gram]
            coeffs, tests, conflicts, ratio_sum = project_conflicts(
                model_gram, onehots, sequential=official)
            coeffs = [[jnp.broadcast_to(c, layer_of_piece.shape) for c in row]
                      for row in coeffs]
        else:
            coeffs, tests, conflicts, ratio_sum = project_conflicts(
                gram, onehots, sequential=official)
        # 4. Smoothing of dominant gradients.
        num_dominant = jnp.zeros((), jnp.float32)
        if alpha is not None:
            alpha_now = alpha(state.count) if callable(alpha) else alpha
            coeffs, num_dominant = smooth_dominant(
                coeffs, gram, layer_of_piece, len(leaves), alpha_now, two_sided=official)
        # 5. Sum over domains: the second pass over the data.
        scale = 1.0 / num_domains if reduction == "mean" else 1.0
        weights = [scale * sum(coeffs[i][m] for i in range(num_domains))
                   for m in range(num_domains)]
        outputs, start = [], 0
        for leaf, flat, p in zip(leaves, flats, pieces, strict=True):
            leaf_weights = [w[start:start + p.num_pieces] for w in weights]
            start += p.num_pieces
            outputs.append(combine_pieces(flat, leaf_weights, p).reshape(leaf.shape[1:]))
        diagnostics = base.Diagnostics(
            modification_frequency=conflicts / jnp.maximum(tests, 1),
            modification_ratio=ratio_sum / jnp.maximum(conflicts, 1),
            dominant_fraction=num_dominant / (num_domains * len(leaves)),
        )
        return outputs, diagnostics

    return base.stacked_transformation(aggregate, seed=seed, name=name)


def _concatenate_grams(leaf_grams: Sequence[Gram]) -> Gram:
    num_domains = len(leaf_grams[0])
    if len(leaf_grams) == 1:
        return leaf_grams[0]
    columns = {
        (a, b): jnp.concatenate([g[a][b] for g in leaf_grams])
        for a in range(num_domains) for b in range(a, num_domains)
    }
    return [[columns[min(a, b), max(a, b)] for b in range(num_domains)]
            for a in range(num_domains)]


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
