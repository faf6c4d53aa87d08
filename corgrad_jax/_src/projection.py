"""Steps 3 and 4 of CorGrad's Algorithm 1 on coefficient arrays: the projection of
conflicting pieces and the smoothing of dominant gradients (Zhou et al., ECAI 2024).

Every projected gradient stays a linear combination ``g~_i^k = sum_m c[k,i,m] g_m^k`` of
the original pieces, so both steps act on the coefficients ``c`` and the piece Gram
matrices ``G^k`` only: ``<g~_i, g~_j> = c_i G c_j^T`` (docs/algorithm.md, Sec. 8).
:func:`corgrad_jax._src.corgrad.corgrad_rule` puts them together as a rule of the engine;
:func:`element_projection` is the closed form at element granularity, where a piece is
one scalar.

Example:
  Two domains, one piece: ``g_1 = (1, 0)`` and ``g_2 = (-1, 1)`` conflict; each is
  projected onto the normal plane of the other's original piece.

  >>> import jax, jax.numpy as jnp
  >>> gram = jnp.array([[[1.0, -1.0], [-1.0, 2.0]]])          # (K=1, D, D)
  >>> orders = domain_orders(2, jax.random.key(0), shuffle=False)
  >>> coeffs, conflicts, _ = project_conflicts(gram, orders, sequential=False)
  >>> coeffs[0].tolist()        # g~_1 = g_1 + g_2 / 2, g~_2 = g_1 + g_2
  [[1.0, 0.5], [1.0, 1.0]]
  >>> int(conflicts)
  2
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from corgrad_jax._src.solvers import inner, matvec

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



def _bilinear(u: jax.Array, gram: jax.Array, v: jax.Array) -> jax.Array:
    """``u G v^T`` per piece and domain: ``u, v`` are ``(K, D', D)``, ``gram`` ``(K, D, D)``.

    The inner product of two combinations of the original pieces, as explicit
    multiply-adds over the short domain axis (:func:`~corgrad_jax._src.solvers.matvec`).
    """
    return inner(u, matvec(gram[:, None], v))


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
    num_domains = gram.shape[-1]
    dtype = jnp.dtype(gram.dtype)
    eps, rtol = _CONFLICT_EPS[dtype], _TIE_RTOL[dtype]
    original2 = jnp.diagonal(gram, axis1=1, axis2=2)  # (K, D): ||g_i^k||^2

    def project(current: jax.Array, reference: jax.Array, original_i2: jax.Array,
                original_j2: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        # current, reference: (K, D', D) coefficients; original_*2: (K, D') squared norms.
        product = _bilinear(current, gram, reference)
        reference2 = _bilinear(reference, gram, reference)
        current2 = _bilinear(current, gram, current)
        nonzero = reference2 > rtol**2 * original_j2
        conflict = (product < -eps * jnp.sqrt(original_i2 * original_j2)) & nonzero
        safe_reference2 = jnp.where(conflict, reference2, 1)
        step = jnp.where(conflict, product / safe_reference2, 0)
        # Modification ratio, as the official code logs it: ||removed|| / ||g_i before||
        # with ||removed|| = |<g_i, g_j>| / ||g_j||.
        ratio = jnp.abs(product) / jnp.sqrt(safe_reference2 * jnp.where(conflict, current2, 1))
        return (current - step[..., None] * reference, conflict.sum(dtype=jnp.float32),
                jnp.where(conflict & (current2 > 0), ratio, 0).sum(dtype=jnp.float32))

    coeffs = jnp.broadcast_to(jnp.eye(num_domains, dtype=dtype), gram.shape)
    start = (coeffs, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    if not sequential:  # all domains advance together against original pieces
        # The D - 1 steps run as one loop whose body is compiled once, as the sequential
        # steps below do: on 620 slices at D = 5 this compiled in 0.34 s instead of
        # 1.09 s unrolled and ran in 0.88 ms instead of 0.74 ms, with the same bits; the
        # whole corgrad update on ResNet18's slices compiled in 3.3 s instead of 4.1 s.
        def project_all(carry: tuple[jax.Array, jax.Array, jax.Array], onehot: jax.Array
                        ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
            coeffs, conflicts, ratio_sum = carry  # onehot (D, D): row i is e_{j_i(s)}
            coeffs, count, ratios = project(coeffs, jnp.broadcast_to(onehot, gram.shape),
                                            original2, inner(original2[:, None, :], onehot))
            return (coeffs, conflicts + count, ratio_sum + ratios), None

        (coeffs, conflicts, ratio_sum), _ = lax.scan(project_all, start, orders.astype(dtype))
        return coeffs, conflicts, ratio_sum

    # Domain i's row meets the current rows j in turn. The D (D - 1) steps run as one
    # loop whose body is compiled once: unrolled, on ResNet18's 620 slices at D = 5, they
    # compiled in 6.2 s and ran in 2.4 ms; as a loop, 0.26 s and 0.6 ms.
    rows = np.repeat(np.arange(num_domains), num_domains - 1)  # i of each step
    references = jnp.argmax(jnp.swapaxes(orders, 0, 1).reshape(-1, num_domains), -1)  # j

    def project_one(carry: tuple[jax.Array, jax.Array, jax.Array],
                    step: tuple[jax.Array, jax.Array]
                    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        coeffs, conflicts, ratio_sum = carry
        i, j = step
        current, count, ratios = project(
            lax.dynamic_slice_in_dim(coeffs, i, 1, axis=1),
            lax.dynamic_slice_in_dim(coeffs, j, 1, axis=1),
            lax.dynamic_slice_in_dim(original2, i, 1, axis=1),
            lax.dynamic_slice_in_dim(original2, j, 1, axis=1))
        return (lax.dynamic_update_slice_in_dim(coeffs, current, i, axis=1),
                conflicts + count, ratio_sum + ratios), None

    (coeffs, conflicts, ratio_sum), _ = lax.scan(project_one, start, (rows, references))
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
    mixing = mixing[layer_of_piece]  # (K, D, D): smoothed c_i = sum_j mixing[i, j] c_j
    smoothed = sum(mixing[:, :, j, None] * coeffs[:, None, j, :]
                   for j in range(coeffs.shape[1]))
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
    if not sequential:
        # Domain i is emptied when another has the opposite sign: so either the signs
        # are mixed and every signed value is emptied (zeros and NaN stay), or none is.
        positive = sum((v > 0).astype(jnp.int32) for v in values)
        negative = sum((v < 0).astype(jnp.int32) for v in values)
        mixed = (positive > 0) & (negative > 0)
        return ([jnp.where(mixed & ((v > 0) | (v < 0)), jnp.zeros_like(v), v) for v in values],
                jnp.where(mixed, positive + negative, 0))
    projected: list[jax.Array] = []
    emptied = jnp.zeros(values[0].shape, jnp.int32)
    for i, value in enumerate(values):
        references = [projected[j] if j < i else values[j]
                      for j in range(num_domains) if j != i]
        conflict = value * references[0] < 0
        for reference in references[1:]:
            conflict = conflict | (value * reference < 0)
        projected.append(jnp.where(conflict, jnp.zeros_like(value), value))
        emptied = emptied + conflict.astype(jnp.int32)
    return projected, emptied
