"""UPGrad and DualProj: projections onto the dual cone of the domain gradients.

The *dual cone* of the rows of :math:`J` (the D domain gradients of a piece) is the set
of directions that conflict with none of them, :math:`\\{x : J x \\succeq 0\\}`. Projecting
:math:`J^\\top u` onto it gives :math:`J^\\top v` with (Quinton & Rey 2024, Proposition 1)

.. math::  v = \\arg\\min_{v \\succeq u} v^\\top G v ,  \\qquad G = J J^\\top ,

a QP on the Gram matrix alone, solved exactly by
:func:`~corgrad_jax._src.solvers.box_minimum` for every piece at once. As in torchjd,
:math:`G` is first normalized by its trace (:math:`\\|J\\|_F^2`; a piece whose trace is
below ``norm_eps`` gets :math:`G = 0`) and regularized, :math:`G + \\epsilon I` with
:math:`\\epsilon` = ``reg_eps``, so that the QP is strictly convex.

At element granularity :math:`G = g g^\\top` has rank one and both QPs have closed forms
(derived in the functions below), computed elementwise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from corgrad_jax._src import base
from corgrad_jax._src.engine import (
    GramRule,
    RuleInputs,
    RuleResult,
    check_range,
    elementwise,
    gram_transformation,
)
from corgrad_jax._src.solvers import box_minimum, check_num_domains


def normalize_and_regularize(gram: jax.Array, norm_eps: Any, reg_eps: Any) -> jax.Array:
    """:math:`G / \\operatorname{tr} G + \\epsilon I` (:math:`\\epsilon I` alone where the
    trace is below ``norm_eps`` or zero), torchjd's ``regularize(normalize(G))``."""
    trace = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None]
    usable = (trace >= norm_eps) & (trace > 0)
    normalized = jnp.where(usable, gram / jnp.where(usable, trace, 1), 0)
    return normalized + reg_eps * jnp.eye(gram.shape[-1], dtype=gram.dtype)


def _check_eps(norm_eps: Any, reg_eps: Any) -> None:
    check_range("norm_eps", norm_eps, 0.0)
    check_range("reg_eps", reg_eps, 0.0)
    try:
        positive = float(reg_eps) > 0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if not positive:
        raise ValueError(f"reg_eps must be > 0 (it makes the QP strictly convex), got {reg_eps}.")


def upgrad_element(values: list[jax.Array], norm_eps: Any, reg_eps: Any) -> jax.Array:
    """UPGrad of one-element pieces, in closed form.

    With :math:`G = g g^\\top` normalized, :math:`\\hat G = \\hat g \\hat g^\\top + \\epsilon I`,
    :math:`\\hat g = g / \\|g\\|`, the QP of domain i, :math:`\\min v^\\top \\hat G v` over
    :math:`v \\succeq e_i / D`, has the KKT solution :math:`v_j = \\max(u_j, -\\hat g_j s /
    \\epsilon)` with :math:`s = \\hat g^\\top v`; solving for s gives
    :math:`s_i = (\\hat g_i / D) / (1 + C_i / \\epsilon)`, :math:`C_i` the squared mass of
    the components of sign opposite to :math:`\\hat g_i`. The update
    :math:`\\sum_m (\\sum_i v^{(i)}_m) g_m = \\|g\\| \\sum_i s_i` is

    .. math::  u = \\frac1D \\Big( S_+ \\frac{\\epsilon t}{\\epsilon t + Q_-}
               + S_- \\frac{\\epsilon t}{\\epsilon t + Q_+} \\Big) ,

    with :math:`t = \\|g\\|^2`, :math:`S_\\pm` the sums and :math:`Q_\\pm` the squared
    masses of the positive and of the negative values: the mean with each sign's part
    shrunk by the other sign's mass (the mean where :math:`t <` ``norm_eps``).
    """
    zero = jnp.zeros_like(values[0])
    positive_sum, negative_sum, positive_mass, negative_mass = zero, zero, zero, zero
    for v in values:
        square = v * v
        positive_sum = positive_sum + jnp.where(v > 0, v, 0)
        negative_sum = negative_sum + jnp.where(v < 0, v, 0)
        positive_mass = positive_mass + jnp.where(v > 0, square, 0)
        negative_mass = negative_mass + jnp.where(v < 0, square, 0)
    total = positive_mass + negative_mass
    scaled = reg_eps * total
    usable = (total >= norm_eps) & (total > 0)
    keep_positive = jnp.where(usable, scaled / jnp.where(usable, scaled + negative_mass, 1), 1)
    keep_negative = jnp.where(usable, scaled / jnp.where(usable, scaled + positive_mass, 1), 1)
    return (positive_sum * keep_positive + negative_sum * keep_negative) / len(values)


def dual_proj_element(values: list[jax.Array], norm_eps: Any, reg_eps: Any) -> jax.Array:
    """DualProj of one-element pieces, in closed form.

    With :math:`\\hat G = \\hat g \\hat g^\\top + \\epsilon I` and :math:`u = \\mathbb 1 / D`,
    the KKT solution is :math:`v_j = \\max(1/D, -\\hat g_j s / \\epsilon)` with
    :math:`s = \\hat g^\\top v` the root of an increasing convex piecewise-linear function,
    the maximum of the lines :math:`\\ell_F` of every set F of components of sign
    opposite to the mean. So s is the least of their roots; in the data's units, with
    :math:`\\sigma` the sign of :math:`\\sum_i g_i` and :math:`t = \\|g\\|^2`,

    .. math::  u = \\|g\\| s = \\sigma \\min_F \\frac{\\epsilon t \\, (\\sigma \\sum_i g_i +
               \\sum_{j \\in F} |g_j|)}{D\\, (\\epsilon t + \\sum_{j \\in F} g_j^2)} ,

    where it suffices to take F empty or the opposite-signed components at least as
    large as one of them (D + 1 candidates). Every other set's root is larger, so the
    candidates are read off the opposite-signed magnitudes sorted in decreasing order:
    F is a prefix of them, whose sums :math:`\\sum_{j \\in F} |g_j|` and
    :math:`\\sum_{j \\in F} g_j^2` are running sums (a sorting network of D(D - 1)/2
    compare-exchanges instead of D^2 membership tests). The mean where
    :math:`t <` ``norm_eps``.
    """
    num_domains = len(values)
    total = base.domain_sum(jnp.stack(values))
    squares = base.domain_sum(jnp.stack([v * v for v in values]))
    usable = (squares >= norm_eps) & (squares > 0)
    sign = jnp.where(total >= 0, 1.0, -1.0).astype(values[0].dtype)
    # |g_j| for the components of sign opposite to the mean, 0 for the others.
    magnitudes = sorted_decreasing([jnp.maximum(-sign * v, 0) for v in values])
    scaled = reg_eps * squares
    aligned_total = sign * total  # at least 0
    best = aligned_total / num_domains  # F empty: the mean, in aligned units
    magnitude = jnp.zeros_like(total)
    mass = jnp.zeros_like(total)
    for largest in magnitudes:  # F: the opposite-signed components at least this large
        magnitude = magnitude + largest
        mass = mass + largest * largest
        # Divided before the product: eps t (...) overflows float32 at |g| ~ 1e13.
        candidate = scaled * ((aligned_total + magnitude) / (num_domains * (scaled + mass)))
        best = jnp.where(largest > 0, jnp.minimum(best, candidate), best)
    return jnp.where(usable, sign * best, total / num_domains)


def sorted_decreasing(values: list[jax.Array]) -> list[jax.Array]:
    """The D arrays sorted elementwise in decreasing order, by odd-even transposition: D
    rounds of compare-exchanges of neighbours, elementwise maxima and minima that XLA
    fuses into one vectorized loop.

    Example:
      >>> import jax.numpy as jnp
      >>> [int(x[0]) for x in sorted_decreasing([jnp.array([v]) for v in (2, 5, 1, 4)])]
      [5, 4, 2, 1]
    """
    values = list(values)
    for start in range(len(values)):
        for i in range(start % 2, len(values) - 1, 2):
            values[i], values[i + 1] = (jnp.maximum(values[i], values[i + 1]),
                                        jnp.minimum(values[i], values[i + 1]))
    return values


def upgrad(
    *,
    granularity: str = "model",
    num_slices: int = 10,
    norm_eps: float = 1e-4,
    reg_eps: float = 1e-4,
    reduction: str = "mean",
) -> optax.GradientTransformationExtraArgs:
    r"""UPGrad (Quinton & Rey 2024): the mean of every domain gradient projected onto the
    dual cone of all of them, piece by piece.

    For each piece with Gram matrix :math:`G` (normalized and regularized as in torchjd,
    see the module docstring) and each domain i,

    .. math::  v^{(i)} = \arg\min_{v \succeq e_i / D} v^\top G v , \qquad
               u = \sum_m \Big(\sum_i v^{(i)}_m\Big) g_m ,

    so :math:`u = \frac1D \sum_i \pi_J(g_i)` (eq. 5 of the paper, Proposition 1 for the
    dual form). The result conflicts with no domain of the piece (up to ``reg_eps``),
    and equals the mean when no two domains conflict. The QPs are solved exactly for
    every piece at once (:func:`~corgrad_jax._src.solvers.box_minimum`); at element
    granularity in closed form (:func:`upgrad_element`).

    Scale: with ``reduction="mean"`` (default) the output is torchjd's ``UPGrad()``
    applied to each piece's matrix of domain gradients; ``"sum"`` multiplies it by D.
    Note ``norm_eps`` is an absolute threshold on a piece's squared norm: at fine
    granularity small pieces fall back to the mean; pass ``norm_eps=0`` to avoid that.

    Args:
      granularity: ``"model"`` (torchjd on the whole model), ``"layer"``, ``"slice"``
        or ``"element"``, as :func:`corgrad`.
      num_slices: slices per leaf at ``"slice"`` granularity.
      norm_eps: pieces whose squared norm is below it are not normalized (torchjd's).
      reg_eps: the ridge :math:`\epsilon` added to the normalized Gram matrix (> 0).
      reduction: ``"mean"`` or ``"sum"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import upgrad
      >>> tx = upgrad()
      >>> g = {"w": jnp.array([[1., 0.], [-1., 1.]])}  # two conflicting domains
      >>> u = tx.update(g, tx.init(None))[0]["w"]
      >>> bool(u @ g["w"][0] >= 0) and bool(u @ g["w"][1] >= 0)
      True

    References:
      Quinton, Rey. Jacobian Descent for Multi-Objective Optimization. 2024, eq. (5) and
      Proposition 1; torchjd ``UPGrad``.
    """
    _check_eps(norm_eps, reg_eps)

    def coefficients(gram: jax.Array, inputs: RuleInputs) -> RuleResult:
        del inputs
        num_domains = gram.shape[-1]
        check_num_domains(num_domains, "upgrad")
        regular = normalize_and_regularize(gram, norm_eps, reg_eps)
        lower = jnp.eye(num_domains, dtype=gram.dtype) / num_domains  # u = e_i / D
        return RuleResult(box_minimum(regular, lower))  # (K, D, D): row i is v^(i)

    rule = GramRule(coefficients, native_reduction="mean", element=elementwise(
        lambda values: upgrad_element(values, norm_eps, reg_eps), "mean"))
    return gram_transformation(rule, granularity=granularity, num_slices=num_slices,
                               reduction=reduction, seed=0, name="upgrad")


def dual_proj(
    *,
    granularity: str = "model",
    num_slices: int = 10,
    norm_eps: float = 1e-4,
    reg_eps: float = 1e-4,
    reduction: str = "mean",
) -> optax.GradientTransformationExtraArgs:
    r"""DualProj: the mean gradient projected onto the dual cone of the domain gradients,
    piece by piece (the projection of GEM, Lopez-Paz & Ranzato 2017, eq. 11).

    For each piece, :math:`v = \arg\min_{v \succeq \mathbb 1 / D} v^\top G v` and
    :math:`u = \sum_m v_m g_m = \pi_J(\bar g)`, the closest vector to the mean that
    conflicts with no domain. :math:`G` is normalized and regularized as in torchjd
    (module docstring); at element granularity :func:`dual_proj_element`.

    Scale: ``reduction="mean"`` (default) is torchjd's ``DualProj()`` on each piece;
    ``"sum"`` multiplies it by D. ``norm_eps`` is an absolute threshold on a piece's
    squared norm, as in :func:`upgrad`.

    Args:
      granularity: ``"model"``, ``"layer"``, ``"slice"`` or ``"element"``.
      num_slices: slices per leaf at ``"slice"`` granularity.
      norm_eps: pieces whose squared norm is below it are not normalized.
      reg_eps: the ridge added to the normalized Gram matrix (> 0).
      reduction: ``"mean"`` or ``"sum"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import dual_proj
      >>> tx = dual_proj(reg_eps=1e-9)
      >>> g = {"w": jnp.array([[1., 0.], [-1., 2.]])}
      >>> [round(float(x), 3) for x in tx.update(g, tx.init(None))[0]["w"]]
      [0.0, 1.0]

    References:
      Lopez-Paz, Ranzato. Gradient Episodic Memory for Continual Learning. NeurIPS 2017,
      eq. (11); Quinton, Rey 2024, Proposition 1; torchjd ``DualProj``.
    """
    _check_eps(norm_eps, reg_eps)

    def coefficients(gram: jax.Array, inputs: RuleInputs) -> RuleResult:
        del inputs
        num_domains = gram.shape[-1]
        check_num_domains(num_domains, "dual_proj")
        regular = normalize_and_regularize(gram, norm_eps, reg_eps)
        lower = jnp.full((1, num_domains), 1 / num_domains, gram.dtype)
        return RuleResult(box_minimum(regular, lower)[:, 0])

    rule = GramRule(coefficients, native_reduction="mean", element=elementwise(
        lambda values: dual_proj_element(values, norm_eps, reg_eps), "mean"))
    return gram_transformation(rule, granularity=granularity, num_slices=num_slices,
                               reduction=reduction, seed=0, name="dual_proj")
