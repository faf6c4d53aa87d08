"""Sign-agreement rules and plain averaging, on the same stacked-gradient scaffold.

These methods decide component by component (the finest granularity) from the signs of
the D domain gradients, instead of projecting: Agr-Sum, Agr-Rand, AND-mask, SAND-mask
and GradDrop. Their diagnostics:
``modification_frequency`` is the share of components that are changed (signs not all in
agreement, or masked), ``modification_ratio`` is ``||sum_i g_i - update|| / ||sum_i g_i||``
over the whole model, and ``dominant_fraction`` is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from corgrad_jax._src import base, draws
from corgrad_jax._src.element_passes import element_sums, unfused
from corgrad_jax._src.pieces import SMALL_LEAF


def _agreement_mask(rows: Sequence[jax.Array]) -> jax.Array:
    """True where the signs of all D domains' rows agree (a zero agrees with nothing)."""
    return jnp.abs(base.domain_sum([jnp.sign(row) for row in rows])) == len(rows)


def _masked_diagnostics(
    totals: Sequence[jax.Array], updates: Sequence[jax.Array], changed: Sequence[jax.Array]
) -> base.Diagnostics:
    def terms(values: list[jax.Array], others: list[jax.Array]) -> list[jax.Array]:
        (total,), (update, change) = values, others
        return [change.astype(jnp.int32), jnp.square(total - update), jnp.square(total)]

    # One pass of sums per leaf, over the reference as a one-row (1, P) array with the
    # update and the changed mask read alongside (a jnp.sum per term was 2-3x slower).
    count = jnp.zeros((), jnp.int32)
    removed2 = total2 = jnp.zeros((), jnp.result_type(*totals))
    for total, update, change in zip(totals, updates, changed, strict=True):
        sums = element_sums(total.reshape(1, -1), terms, (update.reshape(-1), change.reshape(-1)))
        count, removed2, total2 = count + sums[0], removed2 + sums[1], total2 + sums[2]
    size = sum(c.size for c in changed)
    frequency = count.astype(jnp.float32) / max(size, 1)
    ratio = jnp.where(total2 > 0, jnp.sqrt(removed2 / jnp.where(total2 > 0, total2, 1)), 0)
    return base.Diagnostics(frequency, ratio, jnp.zeros((), jnp.float32))


LeafRule = Callable[[jax.Array, jax.Array | None], tuple[jax.Array, jax.Array, jax.Array]]
"""``(stacked (D, *shape), numbers) -> (reference, update, changed)`` of one leaf: the
plain sum or mean it departs from, its update and the components it changed; ``numbers``
are the leaf's random numbers (``shape``), None for a deterministic rule."""

Draw = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]
"""``(key, shape, dtype) -> array``, e.g. :func:`corgrad_jax._src.draws.uniform`."""


def _element_rule(leaf_rule: LeafRule, *, seed: int, name: str, draw: Draw | None = None,
                  per_component: bool = False) -> optax.GradientTransformationExtraArgs:
    """A stacked-gradient transformation that applies ``leaf_rule`` leaf by leaf and
    reports :func:`_masked_diagnostics`.

    A random rule gets ``draw``'s numbers for every component of the model from one
    call, cut into the leaves: one random-bit generator in the compiled program instead
    of one per leaf (62 for ResNet18 made GradDrop compile for 7 to 8 s). A rule that
    decides ``per_component``, with no statistic of its leaf, gets the small leaves
    (biases, norms: up to :data:`~corgrad_jax._src.pieces.SMALL_LEAF` elements)
    concatenated as one flat leaf, so that its compile time does not grow with their
    count."""

    def aggregate(
        leaves: Sequence[jax.Array], state: base.StackedGradientState, key: jax.Array
    ) -> tuple[list[jax.Array], base.Diagnostics]:
        del state
        sizes = [math.prod(leaf.shape[1:]) for leaf in leaves]
        bounds = np.cumsum([0, *sizes])
        every = None if draw is None else draw(key, (int(bounds[-1]),),
                                               jnp.result_type(*leaves))
        small = [k for k, size in enumerate(sizes) if per_component and size <= SMALL_LEAF]
        alone = [k for k in range(len(leaves)) if k not in small]
        # The leaves as the rule sees them: those alone, then the small ones as one.
        inputs = [leaves[k] for k in alone]
        cuts = [(bounds[k], bounds[k + 1]) for k in alone]
        if small:
            inputs.append(jnp.concatenate([leaves[k].reshape(leaves[k].shape[0], -1)
                                           for k in small], axis=1))
        results = []
        for n, stacked in enumerate(inputs):
            numbers = None
            if every is not None:
                numbers = (every[cuts[n][0]:cuts[n][1]] if n < len(alone) else jnp.concatenate(
                    [every[bounds[k]:bounds[k + 1]] for k in small]))
                numbers = numbers.reshape(stacked.shape[1:]).astype(stacked.dtype)
            results.append(leaf_rule(stacked, numbers))
        totals, updates, changed = ([r[i] for r in results] for i in range(3))
        outputs: list[jax.Array] = [None] * len(leaves)  # type: ignore[list-item]
        for n, k in enumerate(alone):
            outputs[k] = updates[n]
        if small:
            ends = np.cumsum([0, *(sizes[k] for k in small)])
            for k, start, stop in zip(small, ends[:-1], ends[1:], strict=True):
                outputs[k] = updates[-1][start:stop].reshape(leaves[k].shape[1:])
        return outputs, _masked_diagnostics(totals, updates, changed)

    return base.stacked_transformation(aggregate, seed=seed, name=name)


def agreement_sum() -> optax.GradientTransformationExtraArgs:
    r"""Agr-Sum (Mansilla et al. 2021): sum the components whose signs all agree.

    .. math:: u = \mathbb{1}[|\textstyle\sum_i \operatorname{sign} g_i| = D]
              \odot \textstyle\sum_i g_i

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import agreement_sum
      >>> tx = agreement_sum()
      >>> tx.update({"w": jnp.array([[1., -1.], [2., 3.]])}, tx.init(None))[0]["w"]
      Array([3., 0.], dtype=float32)

    References:
      Mansilla, Echeveste, Milone, Ferrante. Domain Generalization via Gradient Surgery.
      ICCV 2021.
    """

    def leaf_rule(leaf: jax.Array, numbers: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
        del numbers
        total, mask = base.domain_sum(leaf), _agreement_mask(list(leaf))
        return total, jnp.where(mask, total, 0), ~mask

    return _element_rule(leaf_rule, seed=0, name="agreement_sum", per_component=True)


def _agreement_terms(values: list[jax.Array], others: list[jax.Array]) -> list[jax.Array]:
    """Per component: 1 where the D signs agree, and there the sum's magnitude."""
    del others
    agree = _agreement_mask(values)
    return [agree.astype(jnp.int32), jnp.where(agree, jnp.abs(base.domain_sum(values)), 0)]


def agreement_rand(*, seed: int = 0) -> optax.GradientTransformationExtraArgs:
    r"""Agr-Rand (Mansilla et al. 2021): like Agr-Sum, but the components whose signs
    disagree are drawn from :math:`\mathcal N(0, s^2)`, with ``s`` the mean absolute value
    of the agreeing summed components of the same layer (the official code's scale).
    The standard normal numbers are those of ``jax.random.normal`` with the step's key,
    computed in one fused loop (:func:`corgrad_jax._src.draws.normal`).

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import agreement_rand
      >>> tx = agreement_rand(seed=0)
      >>> u, _ = tx.update({"w": jnp.array([[1., -1., 2.], [2., 3., 2.]])}, tx.init(None))
      >>> u["w"][0], u["w"][2]
      (Array(3., dtype=float32), Array(4., dtype=float32))
    """

    def leaf_rule(leaf: jax.Array, normal: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
        assert normal is not None
        total, mask = base.domain_sum(leaf), _agreement_mask(list(leaf))
        # The layer's count and sum of |agreeing sums| in one pass (two jnp.sum calls
        # each copied their operand first).
        count, magnitude = element_sums(leaf.reshape(leaf.shape[0], -1), _agreement_terms)
        scale = jnp.where(count > 0, magnitude / jnp.maximum(count, 1), 0)
        return total, jnp.where(mask, total, scale * normal), ~mask

    return _element_rule(leaf_rule, seed=seed, name="agreement_rand", draw=draws.normal)


def and_mask(threshold: float = 1.0) -> optax.GradientTransformationExtraArgs:
    r"""AND-mask (Parascandolo et al. 2021), as DomainBed's ``ANDMask``.

    Per layer: :math:`m = \mathbb 1[|\frac1D \sum_i \operatorname{sign} g_i| \ge \tau]`,
    :math:`u = m \odot \bar g / (10^{-10} + \operatorname{mean}(m))` with :math:`\bar g`
    the mean gradient, so the kept components are rescaled by the share kept.

    Args:
      threshold: the agreement threshold :math:`\tau` in [0, 1] (DomainBed's default 1).

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import and_mask
      >>> tx = and_mask(threshold=1.0)
      >>> tx.update({"w": jnp.array([[1., -1.], [3., 3.]])}, tx.init(None))[0]["w"]
      Array([4., 0.], dtype=float32)

    References:
      Parascandolo, Neitz, Orvieto, Gresele, Schölkopf. Learning Explanations That Are
      Hard to Vary. ICLR 2021.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}.")

    def leaf_rule(leaf: jax.Array, numbers: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
        del numbers
        num_domains = leaf.shape[0]
        mean = base.domain_sum(leaf) / num_domains
        agreement = jnp.abs(base.domain_sum(jnp.sign(leaf)) / num_domains)
        mask = agreement >= threshold
        kept = mask.mean(dtype=mean.dtype)
        return mean, jnp.where(mask, mean, 0) / (1e-10 + kept), ~mask

    return _element_rule(leaf_rule, seed=0, name="and_mask")


def mean_gradients() -> optax.GradientTransformationExtraArgs:
    r"""Plain averaging, :math:`u = \frac1D \sum_i g_i`: ERM on the mean of the domain
    losses, under the same stacked-gradient API.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import mean_gradients
      >>> tx = mean_gradients()
      >>> tx.update({"w": jnp.array([[1., -1.], [3., 3.]])}, tx.init(None))[0]["w"]
      Array([2., 1.], dtype=float32)
    """

    def aggregate(
        leaves: Sequence[jax.Array], state: base.StackedGradientState, key: jax.Array
    ) -> tuple[list[jax.Array], base.Diagnostics]:
        del state, key
        updates = [base.domain_sum(leaf) / leaf.shape[0] for leaf in leaves]
        return updates, base.Diagnostics.zeros()

    return base.stacked_transformation(aggregate, seed=0, name="mean_gradients")


def grad_drop_update(stacked: jax.Array, uniform: jax.Array, leak: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    r"""GradDrop's combination of one leaf (Chen et al. 2020, Algorithm 1, lines 10-15).

    With the positive sign purity :math:`P = \frac12 (1 + \sum_i g_i / \sum_i |g_i|)`
    and a uniform draw U per component, domain i keeps its positive components where
    :math:`P > U` and its negative ones where :math:`P < U`
    (:math:`M_i = \mathbb 1[P > U] \mathbb 1[g_i > 0] + \mathbb 1[P < U] \mathbb 1[g_i < 0]`),
    and :math:`u = \sum_i (\ell_i + (1 - \ell_i) M_i)\, g_i` with leaks :math:`\ell`.

    Args:
      stacked: ``(D, *shape)`` per-domain gradients.
      uniform: ``shape`` draws from U(0, 1).
      leak: ``(D,)`` leaks in [0, 1].

    Returns:
      The update and the mask of components where some domain's value was dropped.
    """
    total = base.domain_sum(stacked)
    magnitude = base.domain_sum(jnp.abs(stacked))
    purity = 0.5 * (1 + jnp.where(magnitude > 0, total / jnp.where(magnitude > 0, magnitude, 1),
                                  0))
    keep_positive, keep_negative = purity > uniform, purity < uniform
    out = jnp.zeros_like(total)
    dropped = jnp.zeros(total.shape, bool)
    for i in range(stacked.shape[0]):
        value = stacked[i]
        kept = (keep_positive & (value > 0)) | (keep_negative & (value < 0))
        out = out + (leak[i] + (1 - leak[i]) * kept.astype(value.dtype)) * value
        dropped = dropped | (~kept & (value != 0))
    return out, dropped


def grad_drop(leak: float | Sequence[float] = 0.0, *, seed: int = 0
              ) -> optax.GradientTransformationExtraArgs:
    r"""GradDrop (Chen et al. 2020): per component, keep only the domain values of one
    sign, drawn with the probability of that sign's share of the total magnitude.

    Component by component (element-wise by definition): :func:`grad_drop_update`, with
    a fresh uniform draw per component and step from the key in the state: the numbers
    of ``jax.random.uniform``, computed in one fused loop
    (:func:`corgrad_jax._src.draws.uniform`). Where every domain agrees in sign the sum
    passes unchanged.

    Scale: the update is a sum over domains, torchjd's ``GradDrop(leak=...)`` (which
    draws U with ``torch.rand``); there is no ``reduction`` option.

    Args:
      leak: :math:`\ell`, a float in [0, 1] or one per domain: how much of a dropped
        value leaks through.
      seed: seed of the PRNG key in the state.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import grad_drop
      >>> tx = grad_drop()
      >>> g = {"w": jnp.array([[1., 2.], [3., -2.]])}
      >>> u = tx.update(g, tx.init(None))[0]["w"]
      >>> float(u[0]), float(u[1]) in (2.0, -2.0)
      (4.0, True)

    References:
      Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov. Just Pick a Sign:
      Optimizing Deep Multitask Models with Gradient Sign Dropout. NeurIPS 2020,
      Algorithm 1; torchjd ``GradDrop``.
    """
    leaks = jnp.atleast_1d(jnp.asarray(leak))
    try:
        values = [float(x) for x in np.atleast_1d(np.asarray(leak, dtype=float))]
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        values = []  # traced, from optax.inject_hyperparams
    if any(not 0.0 <= x <= 1.0 for x in values):
        raise ValueError(f"leak must lie in [0, 1], got {leak}.")

    def leaf_rule(leaf: jax.Array, uniform: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
        assert uniform is not None
        num_domains = leaf.shape[0]
        if leaks.shape[0] not in (1, num_domains):
            raise ValueError(f"grad_drop got {leaks.shape[0]} leaks for D={num_domains} "
                             "domains; pass one float or one per domain.")
        leak_per_domain = jnp.broadcast_to(leaks.astype(leaf.dtype), (num_domains,))
        # The update and the mask in a loop of their own, which the diagnostics read:
        # recomputed in their reduction, one element at a time by default, they cost more
        # than writing the mask (ResNet18, D=3: 54 against 75 ms a step).
        def rule(values: jax.Array) -> tuple[jax.Array, jax.Array]:
            return grad_drop_update(values, uniform, leak_per_domain)

        update, dropped = unfused(rule, leaf)
        return base.domain_sum(leaf), update, dropped

    return _element_rule(leaf_rule, seed=seed, name="grad_drop", draw=draws.uniform,
                         per_component=True)


def sand_mask_update(stacked: jax.Array, tau: jax.Array | float, k: jax.Array | float
                     ) -> tuple[jax.Array, jax.Array]:
    r"""SAND-mask of one leaf, as DomainBed's ``SANDMask.mask_grads``.

    .. math::  m = \max\Big(0, \tanh\big(k\, \sigma^{-2} (|\tfrac1D \textstyle\sum_i
               \operatorname{sign} g_i| - \tau)\big)\Big), \qquad
               u = \frac{m \odot \bar g}{10^{-10} + \operatorname{mean}(m)}

    with :math:`\sigma^2` the unbiased variance over domains and :math:`\bar g` the mean
    gradient; where :math:`\sigma^2 = 0` and the agreement equals :math:`\tau` (0 times
    infinity), m is :math:`10^{-17}`, as in DomainBed.

    Returns:
      The update and the mask of the components zeroed (:math:`m \le 10^{-17}`).
    """
    num_domains = stacked.shape[0]
    mean = base.domain_sum(stacked) / num_domains
    variance = base.domain_sum(jnp.square(stacked - mean)) / (num_domains - 1)
    agreement = jnp.abs(base.domain_sum(jnp.sign(stacked)) / num_domains)
    mask = jnp.maximum(jnp.tanh(k * (1 / variance) * (agreement - tau)), 0)
    mask = jnp.where(jnp.isnan(mask), 1e-17, mask)
    kept = mask.mean()
    return mask * mean / (1e-10 + kept), mask <= 1e-17


def sand_mask(tau: float = 0.5, k: float = 10.0) -> optax.GradientTransformationExtraArgs:
    r"""SAND-mask (Shahtalebi et al. 2021), as DomainBed's ``SANDMask``: a smooth AND-mask
    that weighs each component by the agreement of the domains' signs, sharpened where
    their values vary little (:func:`sand_mask_update`, per leaf).

    Scale: a mean over domains (DomainBed's). DomainBed's registry default
    :math:`\tau = 1` makes every mask 0 (``tanh`` of at most 0) and its random search
    draws :math:`\tau \sim U(0, 1)`; the default here is 0.5.

    Args:
      tau: the agreement threshold :math:`\tau` in [0, 1].
      k: the sharpness :math:`k > 0` (DomainBed's default 10).

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import sand_mask
      >>> tx = sand_mask(tau=0.5)
      >>> g = {"w": jnp.array([[1., -1.], [3., 1.]])}
      >>> [round(float(x), 3) for x in tx.update(g, tx.init(None))[0]["w"]]
      [4.0, 0.0]

    References:
      Shahtalebi, Gagnon-Audet, Laleh, Faramarzi, Ahuja, Rish. SAND-mask: An Enhanced
      Gradient Masking Strategy for the Discovery of Invariances in Domain
      Generalization. 2021; DomainBed ``SANDMask``.
    """
    for name, value, high in (("tau", tau, 1.0), ("k", k, float("inf"))):
        try:
            number = float(value)
        except (TypeError, jax.errors.ConcretizationTypeError):
            continue
        if not 0.0 <= number <= high:
            raise ValueError(f"{name} must lie in [0, {high}], got {value}.")

    def leaf_rule(leaf: jax.Array, numbers: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
        del numbers
        update, masked = sand_mask_update(leaf, tau, k)
        return base.domain_sum(leaf) / leaf.shape[0], update, masked

    return _element_rule(leaf_rule, seed=0, name="sand_mask")
