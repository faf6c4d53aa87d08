"""IMTL-G, Aligned-MTL and ConFIG: weights from the spectrum of the Gram matrix.

Each balances the domains through a (pseudo-)inverse of a piece's Gram matrix
:math:`G = J J^\\top`, computed from its eigendecomposition, batched over pieces:

* IMTL-G (Liu et al. 2021) weighs the domains so that the update has equal projections
  on every unit domain gradient;
* Aligned-MTL (Senushkin et al. 2023) makes the domain gradients orthogonal and of
  equal norm (its balance transformation) before averaging;
* ConFIG (Liu et al. 2024) takes the direction with equal cosine to every domain.

At element granularity (:math:`G = g g^\\top`, rank one) each has a closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from corgrad_jax._src import base
from corgrad_jax._src.engine import (
    GramRule,
    RuleInputs,
    RuleResult,
    elementwise,
    gram_transformation,
)
from corgrad_jax._src.solvers import pseudo_inverse

SCALE_MODES = ("min", "median", "rmse")
_IMTL_ZERO = 1e-12  # torchjd: weights are 0 where |sum(pinv(G) d)| is below it


def imtl_g_weights(gram: jax.Array) -> jax.Array:
    """:math:`v = G^+ d` with :math:`d_i = \\|g_i\\|`, normalized to sum to 1 (0 where the
    sum is below 1e-12 in magnitude), torchjd's ``IMTLGWeighting``."""
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram, axis1=1, axis2=2), 0))
    v = (pseudo_inverse(gram) * norms[:, None, :]).sum(-1)
    total = v.sum(-1, keepdims=True)
    small = jnp.abs(total) < _IMTL_ZERO
    return jnp.where(small, 0, v / jnp.where(small, 1, total))


def imtl_g_element(values: list[jax.Array]) -> jax.Array:
    """IMTL-G of one-element pieces: :math:`G^+ = g g^\\top / \\|g\\|^4`, so the weights are
    :math:`g_i / \\sum_j g_j` and :math:`u = \\|g\\|^2 / \\sum_j g_j` (0 where torchjd's
    weight sum :math:`(\\sum_j g_j |g_j|)(\\sum_j g_j) / \\|g\\|^4` is below 1e-12)."""
    total = base.domain_sum(jnp.stack(values))
    squares = base.domain_sum(jnp.stack([v * v for v in values]))
    signed = base.domain_sum(jnp.stack([v * jnp.abs(v) for v in values]))
    safe = jnp.where(squares > 0, squares, 1)
    small = (jnp.abs(signed * total / (safe * safe)) < _IMTL_ZERO) | (squares == 0)
    return jnp.where(small, 0, squares / jnp.where(small, 1, total))


def imtl_g(*, granularity: str = "model", num_slices: int = 10,
           reduction: str = "mean") -> optax.GradientTransformationExtraArgs:
    r"""IMTL-G (Liu et al. 2021), generalized to dependent gradients (Quinton & Rey 2024).

    The update :math:`u = \sum_m w_m g_m` with :math:`\sum_m w_m = 1` has equal
    projections on every unit domain gradient, :math:`\langle u, g_i/\|g_i\|\rangle` the
    same for all i (the paper's eq. 12 on gradients): :math:`w \propto G^{+} d`,
    :math:`d_i = \|g_i\|`, with :math:`G^+` the pseudo-inverse (eigenvalues at or below
    :math:`D\,\epsilon_{\text{mach}}\lambda_{\max}` count as zero, torch's rule), per
    piece; :func:`imtl_g_element` at element granularity, where the weights are
    :math:`g_i / \sum_j g_j` and unbounded as that sum nears 0.

    Scale: the weights sum to 1; ``reduction="mean"`` (default) is torchjd's ``IMTLG()``
    on each piece, ``"sum"`` multiplies it by D.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import imtl_g
      >>> tx = imtl_g()
      >>> g = {"w": jnp.array([[2., 0.], [0., 1.]])}
      >>> [round(float(x), 3) for x in tx.update(g, tx.init(None))[0]["w"]]
      [0.667, 0.667]

    References:
      Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang. Towards Impartial Multi-task
      Learning. ICLR 2021; Quinton, Rey 2024 (the generalization); torchjd ``IMTLG``.
    """

    def coefficients(gram: jax.Array, inputs: RuleInputs) -> RuleResult:
        del inputs
        return RuleResult(imtl_g_weights(gram))

    rule = GramRule(coefficients, native_reduction="mean",
                    element=elementwise(imtl_g_element, "mean"))
    return gram_transformation(rule, granularity=granularity, num_slices=num_slices,
                               reduction=reduction, seed=0, name="imtl_g")


def balance_transformation(gram: jax.Array, scale_mode: str) -> jax.Array:
    """Aligned-MTL's :math:`B = \\sqrt{\\lambda_s}\\, V \\Lambda^{-1/2} V^\\top` over the
    eigenpairs with :math:`\\lambda > D \\epsilon_{\\text{mach}} \\lambda_{\\max}` (the rank
    r), :math:`\\lambda_s` their least (``"min"``), lower median (``"median"``) or mean
    (``"rmse"``); the identity where r = 0. ``(K, D, D)``."""
    num_domains = gram.shape[-1]
    eigenvalues, vectors = jnp.linalg.eigh(gram)  # ascending
    tolerance = eigenvalues[..., -1:] * num_domains * float(jnp.finfo(gram.dtype).eps)
    kept = eigenvalues > tolerance
    rank = kept.sum(-1)
    if scale_mode == "min":
        scale = jnp.where(kept, eigenvalues, jnp.inf).min(-1)
    elif scale_mode == "median":  # kept are the top r: the lower median is index D-r+(r-1)//2
        index = jnp.clip(num_domains - rank + (rank - 1) // 2, 0, num_domains - 1)
        scale = jnp.take_along_axis(eigenvalues, index[..., None], axis=-1)[..., 0]
    else:
        scale = jnp.where(kept, eigenvalues, 0).sum(-1) / jnp.maximum(rank, 1)
    inverse_root = jnp.where(kept, 1 / jnp.sqrt(jnp.where(kept, eigenvalues, 1)), 0)
    balance = (vectors * inverse_root[..., None, :]) @ jnp.swapaxes(vectors, -1, -2)
    balance = jnp.sqrt(jnp.where(rank > 0, scale, 1))[..., None, None] * balance
    eye = jnp.eye(num_domains, dtype=gram.dtype)
    return jnp.where((rank > 0)[..., None, None], balance, eye)


def aligned_mtl(*, scale_mode: str = "min", granularity: str = "model", num_slices: int = 10,
                reduction: str = "mean") -> optax.GradientTransformationExtraArgs:
    r"""Aligned-MTL (Senushkin et al. 2023): average the domain gradients after aligning
    their principal components, piece by piece.

    With :math:`G = V \Lambda V^\top` (rank r), the balance transformation
    :math:`B = \sqrt{\lambda_s} V \Lambda^{-1/2} V^\top` makes the gradients
    :math:`B J` orthogonal with equal norms :math:`\sqrt{\lambda_s}` (the paper's
    Algorithm 1, eqs. 8-10), and :math:`u = (B \mathbb 1 / D)^\top J`. At element
    granularity (rank one) :math:`u` is the mean, whatever ``scale_mode``.

    Scale: ``reduction="mean"`` (default) is torchjd's ``AlignedMTL(scale_mode=...)`` on
    each piece; ``"sum"`` multiplies it by D.

    Args:
      scale_mode: :math:`\lambda_s`: the least eigenvalue (``"min"``, the paper's), the
        lower median (``"median"``) or the mean (``"rmse"``, the original code's).
      granularity: ``"model"``, ``"layer"``, ``"slice"`` or ``"element"``.
      num_slices: slices per leaf at ``"slice"`` granularity.
      reduction: ``"mean"`` or ``"sum"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import aligned_mtl
      >>> tx = aligned_mtl()
      >>> g = {"w": jnp.array([[2., 0.], [0., 1.]])}
      >>> [round(float(x), 3) for x in tx.update(g, tx.init(None))[0]["w"]]
      [0.5, 0.5]

    References:
      Senushkin, Patakin, Kuznetsov, Konushin. Independent Component Alignment for
      Multi-Task Learning. CVPR 2023, Algorithm 1; torchjd ``AlignedMTL``.
    """
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"Unknown scale_mode {scale_mode!r}; expected one of {SCALE_MODES}.")

    def coefficients(gram: jax.Array, inputs: RuleInputs) -> RuleResult:
        del inputs
        num_domains = gram.shape[-1]
        balance = balance_transformation(gram, scale_mode)
        return RuleResult(balance.sum(-1) / num_domains)

    def element(values: list[jax.Array]) -> jax.Array:
        return base.domain_sum(jnp.stack(values)) / len(values)

    rule = GramRule(coefficients, native_reduction="mean", element=elementwise(element, "mean"))
    return gram_transformation(rule, granularity=granularity, num_slices=num_slices,
                               reduction=reduction, seed=0, name="aligned_mtl")


def con_fig_weights(gram: jax.Array) -> jax.Array:
    """ConFIG's weights on the domain gradients, from the Gram matrix.

    With :math:`N = \\operatorname{diag}(1/\\|g_i\\|)` (0 for a zero gradient), the unit
    gradients :math:`U = N J` and :math:`U^+ = U^\\top (U U^\\top)^+`, the direction
    :math:`U^+ \\mathbb 1 = J^\\top a`, :math:`a = N (N G N)^+ \\mathbb 1`; the update is its
    unit vector times the sum of the projections on it:
    :math:`(\\mathbb 1^\\top G a / a^\\top G a)\\, J^\\top a` (torch's ``normalize`` floors
    the norm at 1e-12). Eigenvalues of :math:`N G N` at or below
    :math:`10 D \\epsilon_{\\text{mach}} \\lambda_{\\max}`, its rounding level, count as zero.
    """
    num_domains = gram.shape[-1]
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram, axis1=1, axis2=2), 0))
    inverse = jnp.where(norms > 0, 1 / jnp.where(norms > 0, norms, 1), 0)
    units = inverse[:, :, None] * gram * inverse[:, None, :]
    rtol = 10 * num_domains * float(jnp.finfo(gram.dtype).eps)
    a = inverse * pseudo_inverse(units, rtol).sum(-1)
    norm2 = jnp.maximum((a[:, :, None] * gram * a[:, None, :]).sum((1, 2)), 0)
    length = (gram.sum(1) * a).sum(-1)
    denominator = jnp.maximum(jnp.sqrt(norm2), 1e-12) ** 2
    return a * (length / denominator)[:, None]


def con_fig_element(values: list[jax.Array]) -> jax.Array:
    """ConFIG of one-element pieces: the unit gradients are the signs, the direction is
    :math:`\\operatorname{sign}(\\sum_i \\operatorname{sign} g_i)`, so :math:`u = \\sum_i g_i`
    where the signs do not balance out and 0 where they do."""
    total = base.domain_sum(jnp.stack(values))
    balance = base.domain_sum(jnp.stack([jnp.sign(v) for v in values]))
    return jnp.where(balance != 0, total, 0)


def con_fig(*, granularity: str = "model", num_slices: int = 10,
            reduction: str = "sum") -> optax.GradientTransformationExtraArgs:
    r"""ConFIG (Liu et al. 2024): the conflict-free direction with equal cosine to every
    domain gradient, scaled by the sum of the projections on it, piece by piece.

    .. math::  \hat d = \frac{U^{+} \mathbb 1}{\|U^{+} \mathbb 1\|},\quad
               U = \Big[\frac{g_i}{\|g_i\|}\Big]_i , \qquad
               u = \Big(\sum_i \langle g_i, \hat d\rangle\Big) \hat d

    (the paper's eq. 2), from Gram matrices only (:func:`con_fig_weights`); at element
    granularity :func:`con_fig_element`.

    Scale: the length is a sum over domains; ``reduction="sum"`` (default) is torchjd's
    ``ConFIG()`` on each piece, ``"mean"`` divides it by D.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import con_fig
      >>> tx = con_fig()
      >>> g = {"w": jnp.array([[1., 0.], [0., 1.]])}
      >>> [round(float(x), 3) for x in tx.update(g, tx.init(None))[0]["w"]]
      [1.0, 1.0]

    References:
      Liu, Chu, Thuerey. ConFIG: Towards Conflict-free Training of Physics Informed
      Neural Networks. 2024, eq. (2); torchjd ``ConFIG``.
    """

    def coefficients(gram: jax.Array, inputs: RuleInputs) -> RuleResult:
        del inputs
        return RuleResult(con_fig_weights(gram))

    rule = GramRule(coefficients, native_reduction="sum",
                    element=elementwise(con_fig_element, "sum"))
    return gram_transformation(rule, granularity=granularity, num_slices=num_slices,
                               reduction=reduction, seed=0, name="con_fig")
