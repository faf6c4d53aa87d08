"""CorGrad: layering, slicing, projection of conflicts, and smoothing of dominant gradients.

This file reads like the paper's Algorithm 1 (Zhou et al., ECAI 2024). Each step is a
named function:

1. *Layering and slicing* (Sec. 3.4, Fig. 1): :func:`~corgrad_jax._src.pieces.leaf_pieces`
   cuts each layer's per-domain gradient into pieces.
2. *Piece Gram matrices*: :func:`~corgrad_jax._src.pieces.piece_gram`, one pass over the
   data (docs/algorithm.md, Sec. 8).
3. *Projection of conflicting pieces* (Alg. 1, lines 3-7; eq. 13 with the squared norm):
   :func:`~corgrad_jax._src.projection.project_conflicts`, on coefficient arrays.
4. *Smoothing of dominant gradients* (Alg. 1, lines 8-11):
   :func:`~corgrad_jax._src.projection.smooth_dominant`.
5. *Sum over domains* (Alg. 1, line 12):
   :func:`~corgrad_jax._src.pieces.combine_pieces`, the second pass.

Every projected gradient stays a linear combination ``g~_i^k = sum_m c[k,i,m] g_m^k`` of
the original pieces, so steps 3 and 4 act on the coefficients ``c`` and on the Gram
matrices ``G^k`` only: ``<g~_i, g~_j> = c_i G c_j^T``. Steps 3 and 4 are CorGrad's *rule*
(:func:`corgrad_rule`); steps 1, 2 and 5 are the engine every Gram rule shares
(``_src/engine.py``). At element granularity a piece is one scalar and the projection
has a closed form (:func:`~corgrad_jax._src.projection.element_projection`), computed
elementwise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from corgrad_jax._src import base
from corgrad_jax._src.element_passes import (
    element_sums,
    segment_combine,
    segment_element_sums,
    unfused_in_turn,
)
from corgrad_jax._src.engine import (
    GramRule,
    RuleInputs,
    RuleResult,
    check_gram_options,
    gram_transformation,
)
from corgrad_jax._src.pieces import SMALL_LEAF
from corgrad_jax._src.projection import (
    domain_orders,
    dominant_mixing,
    element_projection,
    project_conflicts,
    smooth_dominant,
)

AlphaLike = float | optax.Schedule | jax.Array | None


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
            if alpha is None:  # no smoothing: only the conflicts are counted
                return [emptied]
            return [emptied, *(p * p for p in projected), *(v * v for v in values)]

        # The first pass counts the conflicts and gives the layer norms; the second
        # recomputes the projection and writes the (smoothed) sum, cheaper than
        # storing D projected copies. The small leaves (biases, norms) go through both
        # as one concatenated array, their layer norms from one segmented pass, so that
        # the compile time does not grow with their count.
        small = [k for k, flat in enumerate(flats) if flat.shape[1] <= SMALL_LEAF]
        large = [k for k in range(len(flats)) if k not in small]
        ends = np.cumsum([0] + [flats[k].shape[1] for k in small])
        group = jnp.concatenate([flats[k] for k in small], axis=1) if small else None
        # The conflicts, and per leaf the sums of the squares: (leaves, 2D) in the order
        # large, then small, put back in the leaves' order by one static gather.
        conflicts = jnp.zeros((), jnp.int32)
        squares = []
        for k in large:
            emptied, *leaf_squares = element_sums(flats[k], first_pass)
            conflicts = conflicts + emptied
            if alpha is not None:
                squares.append(jnp.stack(leaf_squares)[None])
        if group is not None:
            emptied, *group_squares = (
                element_sums(group, first_pass) if alpha is None
                else segment_element_sums(group, first_pass, ends))
            conflicts = conflicts + emptied.sum()
            if alpha is not None:
                squares.append(jnp.stack(group_squares, axis=1))
        conflicts = conflicts.astype(jnp.float32)
        weights = jnp.ones((len(flats), num_domains), flats[0].dtype)
        num_dominant = jnp.zeros((), jnp.float32)
        if alpha is not None:
            sums = jnp.concatenate(squares)[np.argsort(large + small)]  # (leaves, 2D)
            norms = jnp.sqrt(sums[:, :num_domains])
            originals = jnp.sqrt(sums[:, num_domains:])
            mixing, num_dominant = dominant_mixing(
                norms, originals.mean(-1, keepdims=True), smoothing_weight(inputs.count),
                two_sided=official)
            weights = mixing.sum(1)  # (layers, D): sum_i M[i, m]

        def projected(flat: jax.Array) -> list[jax.Array]:
            return element_projection([flat[i] for i in range(num_domains)],
                                      sequential=official)[0]

        def combine(values: list[jax.Array], leaf: int | None) -> jax.Array:
            """sum_m weights[leaf, m] values[m], or the plain sum without smoothing."""
            out = values[0] if leaf is None else weights[leaf, 0] * values[0]
            for m in range(1, num_domains):
                out = out + (values[m] if leaf is None else weights[leaf, m] * values[m])
            return out

        # Each large leaf's sum in a loop of its own over the flat values, the leaves in
        # turn: XLA:CPU otherwise iterates the fused loop over the leaf's shape, and a
        # PyTorch kernel's minor dimension of 3 does not vectorize.
        outputs: list[jax.Array] = [None] * len(flats)  # type: ignore[list-item]
        sums = unfused_in_turn(
            [lambda rows, k=k: combine(projected(rows), None if alpha is None else k)
             for k in large], [flats[k] for k in large])
        for k, out in zip(large, sums, strict=True):
            outputs[k] = out
        if group is not None:
            values = projected(group)
            out = (combine(values, None) if alpha is None  # else each leaf's weights, by block
                   else segment_combine(jnp.stack(values), weights[np.array(small)], ends))
            for k, start, stop in zip(small, ends[:-1], ends[1:], strict=True):
                outputs[k] = out[start:stop]
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
