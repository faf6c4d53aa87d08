"""GradVac: gradient vaccine, with adaptive similarity targets per domain pair and piece.

Like PCGrad, GradVac corrects each domain's gradient against every other domain's, one
after the other, but it aims at a *target* cosine similarity instead of orthogonality:
the target of every pair (i, j) and piece k is an exponential moving average of the
similarities seen at earlier steps, kept in the optimizer state. Every corrected
gradient stays a combination of the original pieces, :math:`\\tilde g_i^k = \\sum_m
c_{k,i,m} g_m^k`, so the corrections run on coefficients and Gram matrices (as torchjd's
``GradVacWeighting`` does), and the engine cuts the pieces: LibMTL's group types
``whole_model`` and ``all_matrix`` are ``granularity="model"`` and ``"layer"``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from corgrad_jax._src import base
from corgrad_jax._src.engine import (
    GramRule,
    RuleInputs,
    RuleResult,
    check_range,
    gram_transformation,
    state_dtype,
)
from corgrad_jax._src.projection import domain_orders
from corgrad_jax._src.solvers import inner, matvec


def vaccinate(gram: jax.Array, targets: jax.Array, orders: jax.Array, beta: Any, eps: float
              ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """GradVac's corrections (Wang et al. 2021, Sec. 3.2), on coefficients, every piece at
    once.

    For every domain i and every other domain j (in ``orders``), with
    :math:`\\phi = \\langle \\tilde g_i, g_j\\rangle / (\\|\\tilde g_i\\| \\|g_j\\| + \\epsilon)`
    and the target :math:`\\hat\\phi_{ij}`: if :math:`\\phi < \\hat\\phi_{ij}`,

    .. math::  \\tilde g_i \\leftarrow \\tilde g_i + \\frac{\\|\\tilde g_i\\| (\\hat\\phi
               \\sqrt{1 - \\phi^2} - \\phi \\sqrt{1 - \\hat\\phi^2})}{\\|g_j\\|
               \\sqrt{1 - \\hat\\phi^2} + \\epsilon}\\, g_j

    (the paper's eq. 5, which sets the similarity to the target), and in every case
    :math:`\\hat\\phi_{ij} \\leftarrow (1 - \\beta) \\hat\\phi_{ij} + \\beta \\phi` (eq. 6).

    Args:
      gram: ``(K, D, D)`` Gram matrices.
      targets: ``(K, D, D)`` the targets :math:`\\hat\\phi_{ij}` (the diagonal is unused).
      orders: ``(D - 1, D, D)`` one-hot orders (:func:`~corgrad_jax._src.projection.domain_orders`).
      beta: the EMA rate :math:`\\beta`.
      eps: :math:`\\epsilon` of the denominators.

    Returns:
      ``(coeffs, targets, modified, ratio_sum)``: ``(K, D, D)`` coefficients, the new
      targets, the number of corrections and the sum of their
      :math:`\\|\\text{added}\\| / \\|\\tilde g_i\\|`.
    """
    num_domains = gram.shape[-1]
    dtype = gram.dtype
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram, axis1=1, axis2=2), 0))  # (K, D)
    # The D(D-1) corrections run as one loop whose body is compiled once: unrolled, they
    # compiled to hundreds of small kernels (3.7 s at D=5), for 0.8 ms of work.
    steps = (np.repeat(np.arange(num_domains), num_domains - 1),  # i of each step
             jnp.swapaxes(orders, 0, 1).reshape(-1, num_domains).astype(dtype))  # e_j

    def correct_one(carry: tuple[jax.Array, ...], step_of: tuple[jax.Array, jax.Array]
                    ) -> tuple[tuple[jax.Array, ...], None]:
        coeffs, targets, corrected, ratios = carry
        i, onehot = step_of
        current = lax.dynamic_index_in_dim(coeffs, i, axis=1, keepdims=False)  # (K, D)
        goals = lax.dynamic_index_in_dim(targets, i, axis=1, keepdims=False)
        pushed = matvec(gram, current)  # G c_i (G is symmetric)
        similar = inner(pushed, onehot)  # c_i G e_j
        norm_i = jnp.sqrt(jnp.maximum(inner(pushed, current), 0))
        norm_j = inner(norms, onehot)
        similarity = similar / (norm_i * norm_j + eps)
        target = inner(goals, onehot)
        correct = similarity < target
        room = jnp.sqrt(jnp.maximum(1 - target**2, 0))
        step = norm_i * (target * jnp.sqrt(jnp.maximum(1 - similarity**2, 0))
                         - similarity * room) / (norm_j * room + eps)
        step = jnp.where(correct, step, 0)
        current = current + step[:, None] * onehot
        updated = (1 - beta) * target + beta * similarity
        goals = jnp.where(onehot > 0, updated[:, None], goals)
        ratio = jnp.abs(step) * norm_j / jnp.where(norm_i > 0, norm_i, 1)
        carry = (lax.dynamic_update_index_in_dim(coeffs, current, i, axis=1),
                 lax.dynamic_update_index_in_dim(targets, goals, i, axis=1),
                 corrected + correct.astype(jnp.float32),
                 ratios + jnp.where(correct & (norm_i > 0), ratio, 0).astype(jnp.float32))
        return carry, None

    pieces = gram.shape[0]
    start = (jnp.broadcast_to(jnp.eye(num_domains, dtype=dtype), gram.shape),
             targets.astype(dtype), jnp.zeros((pieces,), jnp.float32),
             jnp.zeros((pieces,), jnp.float32))
    (coeffs, targets, corrected, ratios), _ = lax.scan(correct_one, start, steps)
    return coeffs, targets, corrected.sum(), ratios.sum()


def grad_vac(
    num_domains: int,
    beta: float = 0.5,
    *,
    eps: float = 1e-8,
    granularity: str = "model",
    num_slices: int = 10,
    shuffle: bool = True,
    seed: int = 0,
    reduction: str = "sum",
) -> optax.GradientTransformationExtraArgs:
    r"""GradVac (Wang et al. 2021): correct each domain's gradient toward an adaptive
    similarity target with every other domain, piece by piece.

    Per piece k, for every domain i and every other domain j (a random order per i,
    drawn every step, or ascending without ``shuffle``), the cosine similarity
    :math:`\phi` of i's corrected gradient with j's original one is raised to the
    target :math:`\hat\phi_{ijk}` when below it (eq. 5), and the target follows
    :math:`\phi` by an EMA of rate ``beta`` (eq. 6); :math:`u = \sum_i \tilde g_i`
    (:func:`vaccinate`). The targets, ``(pieces, D, D)``, start at 0 and live in the
    state's ``rule_state``: with zero targets the first step is PCGrad's projection.
    The state is sized at ``init``, which needs the parameters (their shapes), and at
    element granularity holds :math:`D^2` floats per parameter.

    Scale: ``reduction="sum"`` (default) is torchjd's ``GradVac(beta, eps)`` (the sum of
    the corrected gradients) on each piece and LibMTL's ``GradVac``; ``"mean"`` divides
    by D. LibMTL's group types ``whole_model`` and ``all_matrix`` are
    ``granularity="model"`` and ``"layer"``.

    Args:
      num_domains: D, to size the targets at ``init``.
      beta: the EMA rate of the targets, in [0, 1].
      eps: added to the denominators (torchjd's and LibMTL's 1e-8).
      granularity: ``"model"``, ``"layer"``, ``"slice"`` or ``"element"``.
      num_slices: slices per leaf at ``"slice"`` granularity.
      shuffle: a random order of the other domains per domain and step (the paper's).
      seed: seed of the order's PRNG key.
      reduction: ``"sum"`` or ``"mean"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax import grad_vac
      >>> tx = grad_vac(2, shuffle=False)
      >>> g = {"w": jnp.array([[1., 0.], [-1., 1.]])}
      >>> u, state = tx.update(g, tx.init({"w": jnp.zeros(2)}))
      >>> [round(float(x), 3) for x in u["w"]]  # the first step is PCGrad's
      [0.5, 1.5]

    References:
      Wang, Tsvetkov, Firat, Cao. Gradient Vaccine: Investigating and Improving
      Multi-task Optimization in Massively Multilingual Models. ICLR 2021, eqs. (5), (6);
      torchjd ``GradVac``; LibMTL ``GradVac``.
    """
    check_range("beta", beta, 0.0, 1.0)
    check_range("eps", eps, 0.0)
    if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 2:
        raise ValueError(f"num_domains must be an int >= 2, got {num_domains!r}.")

    def init_state(num_pieces: int) -> jax.Array:
        return jnp.zeros((num_pieces, num_domains, num_domains), state_dtype())

    def coefficients(gram: jax.Array, inputs: RuleInputs) -> RuleResult:
        if gram.shape[-1] != num_domains:
            raise ValueError(f"grad_vac was made for num_domains={num_domains}, but the "
                             f"gradients stack D={gram.shape[-1]}.")
        orders = domain_orders(num_domains, inputs.key, shuffle=shuffle)
        coeffs, targets, modified, ratio_sum = vaccinate(
            gram, inputs.state.astype(gram.dtype), orders, beta, eps)
        tests = gram.shape[0] * num_domains * (num_domains - 1)
        diagnostics = base.Diagnostics(modified / tests, ratio_sum / jnp.maximum(modified, 1),
                                       jnp.zeros((), jnp.float32))
        return RuleResult(coeffs, diagnostics, targets)

    rule = GramRule(coefficients, native_reduction="sum", init_state=init_state)
    return gram_transformation(rule, granularity=granularity, num_slices=num_slices,
                               reduction=reduction, seed=seed, name="grad_vac")
