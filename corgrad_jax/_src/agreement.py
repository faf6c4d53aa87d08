"""Sign-agreement baselines and plain averaging, on the same stacked-gradient scaffold.

These methods decide component by component (the finest granularity) from the signs of
the D domain gradients, instead of projecting. Their diagnostics:
``modification_frequency`` is the share of components that are changed (signs not all in
agreement, or masked), ``modification_ratio`` is ``||sum_i g_i - update|| / ||sum_i g_i||``
over the whole model, and ``dominant_fraction`` is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from corgrad_jax._src import base


def _agreement_mask(stacked: jax.Array) -> jax.Array:
    """True where the signs of all D domains agree (a zero agrees with nothing)."""
    return jnp.abs(base.domain_sum(jnp.sign(stacked))) == stacked.shape[0]


def _masked_diagnostics(
    totals: Sequence[jax.Array], updates: Sequence[jax.Array], changed: Sequence[jax.Array]
) -> base.Diagnostics:
    size = sum(c.size for c in changed)
    frequency = sum(c.sum(dtype=jnp.float32) for c in changed) / max(size, 1)
    removed2 = sum(jnp.sum(jnp.square(t - u)) for t, u in zip(totals, updates, strict=True))
    total2 = sum(jnp.sum(jnp.square(t)) for t in totals)
    ratio = jnp.where(total2 > 0, jnp.sqrt(removed2 / jnp.where(total2 > 0, total2, 1)), 0)
    return base.Diagnostics(frequency, ratio, jnp.zeros((), jnp.float32))


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

    def aggregate(
        leaves: Sequence[jax.Array], state: base.StackedGradientState, key: jax.Array
    ) -> tuple[list[jax.Array], base.Diagnostics]:
        del state, key
        totals = [base.domain_sum(leaf) for leaf in leaves]
        masks = [_agreement_mask(leaf) for leaf in leaves]
        updates = [jnp.where(m, t, 0) for m, t in zip(masks, totals, strict=True)]
        return updates, _masked_diagnostics(totals, updates, [~m for m in masks])

    return base.stacked_transformation(aggregate, seed=0, name="agreement_sum")


def agreement_rand(*, seed: int = 0) -> optax.GradientTransformationExtraArgs:
    r"""Agr-Rand (Mansilla et al. 2021): like Agr-Sum, but the components whose signs
    disagree are drawn from :math:`\mathcal N(0, s^2)`, with ``s`` the mean absolute value
    of the agreeing summed components of the same layer (the official code's scale).

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import agreement_rand
      >>> tx = agreement_rand(seed=0)
      >>> u, _ = tx.update({"w": jnp.array([[1., -1., 2.], [2., 3., 2.]])}, tx.init(None))
      >>> u["w"][0], u["w"][2]
      (Array(3., dtype=float32), Array(4., dtype=float32))
    """

    def aggregate(
        leaves: Sequence[jax.Array], state: base.StackedGradientState, key: jax.Array
    ) -> tuple[list[jax.Array], base.Diagnostics]:
        del state
        keys = jax.random.split(key, len(leaves))
        totals, updates, changed = [], [], []
        for leaf, leaf_key in zip(leaves, keys, strict=True):
            total = base.domain_sum(leaf)
            mask = _agreement_mask(leaf)
            count = mask.sum()
            scale = jnp.where(count > 0, jnp.abs(jnp.where(mask, total, 0)).sum()
                              / jnp.maximum(count, 1), 0)
            noise = scale * jax.random.normal(leaf_key, total.shape, total.dtype)
            totals.append(total)
            updates.append(jnp.where(mask, total, noise))
            changed.append(~mask)
        return updates, _masked_diagnostics(totals, updates, changed)

    return base.stacked_transformation(aggregate, seed=seed, name="agreement_rand")


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

    def aggregate(
        leaves: Sequence[jax.Array], state: base.StackedGradientState, key: jax.Array
    ) -> tuple[list[jax.Array], base.Diagnostics]:
        del state, key
        totals, updates, changed = [], [], []
        for leaf in leaves:
            num_domains = leaf.shape[0]
            mean = base.domain_sum(leaf) / num_domains
            agreement = jnp.abs(base.domain_sum(jnp.sign(leaf)) / num_domains)
            mask = agreement >= threshold
            kept = mask.mean(dtype=mean.dtype)
            totals.append(mean)
            updates.append(jnp.where(mask, mean, 0) / (1e-10 + kept))
            changed.append(~mask)
        return updates, _masked_diagnostics(totals, updates, changed)

    return base.stacked_transformation(aggregate, seed=0, name="and_mask")


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
