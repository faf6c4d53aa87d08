"""Small batched solvers for the rules' D x D problems: exact, jit-able, no host callback.

Every rule solves a tiny problem per piece (D is the number of domains, a handful), for
hundreds of pieces at once. Library QP solvers loop over problems on the host; here the
problems are solved *by enumeration of active sets*: a convex QP over a box or a simplex
in D variables has its optimum where the KKT conditions hold for one of the :math:`2^D`
sets of active constraints, and on a fixed set they are a linear system. So every
candidate is computed at once by a batched linear solve (an unrolled elimination over
the D static pivots, vectorized over pieces and candidates), the infeasible ones are
discarded, and the feasible candidate of least objective is the optimum: exact up to
the rounding of the D x D solves, with no tolerance to tune and no iteration count.
The cost is :math:`O(2^D D^3)` per piece, so :data:`MAX_DOMAINS` caps D.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MAX_DOMAINS = 12
"""Enumerating :math:`2^D` active sets is cheap up to here (4,096 candidates per piece)."""

# A candidate whose free variables fall below their bound by more than this (relative to
# the bounds' scale) is infeasible; a pivot below this times the trace is singular.
FEASIBILITY_RTOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.float64): 1e-12}
PIVOT_RTOL = {jnp.dtype(jnp.float32): 1e-6, jnp.dtype(jnp.float64): 1e-13}


def check_num_domains(num_domains: int, name: str) -> None:
    if num_domains > MAX_DOMAINS:
        raise ValueError(
            f"{name} solves its per-piece problem by enumerating 2^D active sets and supports "
            f"D <= {MAX_DOMAINS} domains; got D={num_domains}.")


@functools.cache
def active_sets(num_domains: int) -> np.ndarray:
    """``(2^D, D)`` booleans: row s marks the members of the s-th subset of the domains."""
    codes = np.arange(2**num_domains)[:, None]
    return ((codes >> np.arange(num_domains)[None, :]) & 1).astype(bool)


def solve_on_subsets(matrix: jax.Array, free: jax.Array, rhs: jax.Array,
                     pivot_floor: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Solves :math:`M x = b` with :math:`M` the symmetric ``matrix`` restricted to the
    ``free`` rows and columns and the identity elsewhere, by Gaussian elimination
    without pivoting (``matrix`` is positive semi-definite), unrolled over the D pivots.

    Args:
      matrix: ``(..., D, D)`` symmetric positive semi-definite matrices.
      free: ``(..., D)`` booleans, broadcastable against ``matrix[..., 0]``.
      rhs: ``(..., D, R)`` right-hand sides.
      pivot_floor: ``(...)`` a pivot at or below it makes the system singular.

    Returns:
      ``(x, valid)``: ``(..., D, R)`` solutions and ``(...)`` booleans, False where a
      free pivot was singular (x is then meaningless).
    """
    num_domains = matrix.shape[-1]
    solution, valid = solve_columns(matrix, free, [rhs[..., a, :] for a in range(num_domains)],
                                    pivot_floor)
    return jnp.stack(solution, axis=-2), valid


def solve_columns(matrix: jax.Array, free: jax.Array, right: list[jax.Array],
                  pivot_floor: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    """:func:`solve_on_subsets` with the right-hand side and the solution as D arrays
    ``(..., R)``, one per row."""
    num_domains = matrix.shape[-1]
    shape = jnp.broadcast_shapes(matrix.shape[:-2], free.shape[:-1], right[0].shape[:-1],
                                 jnp.shape(pivot_floor))
    free = jnp.broadcast_to(free, (*shape, num_domains))
    rows = [[jnp.where(free[..., a] & free[..., b], matrix[..., a, b], float(a == b))
             for b in range(num_domains)] for a in range(num_domains)]
    right = [jnp.broadcast_to(r, (*shape, r.shape[-1])) for r in right]
    valid = jnp.ones(shape, bool)
    inverse_pivots = []
    for k in range(num_domains):
        pivot = rows[k][k]
        good = pivot > pivot_floor
        valid = valid & (good | ~free[..., k])
        inverse = 1 / jnp.where(good, pivot, 1)
        inverse_pivots.append(inverse)
        for i in range(k + 1, num_domains):
            factor = rows[i][k] * inverse
            for j in range(k + 1, num_domains):
                rows[i][j] = rows[i][j] - factor * rows[k][j]
            right[i] = right[i] - factor[..., None] * right[k]
    solution: list[jax.Array] = [None] * num_domains  # type: ignore[list-item]
    for k in reversed(range(num_domains)):
        acc = right[k]
        for j in range(k + 1, num_domains):
            acc = acc - rows[k][j][..., None] * solution[j]
        solution[k] = acc * inverse_pivots[k][..., None]
    return solution, valid


def sum_list(terms: list[jax.Array]) -> jax.Array:
    """The sum of a short list of arrays, broadcast, as explicit adds in order."""
    out = terms[0]
    for term in terms[1:]:
        out = out + term
    return out


def matvec(matrix: jax.Array, x: jax.Array) -> jax.Array:
    """:math:`(M x)_a = \\sum_b M_{ab} x_b` over the last axes, batched by broadcasting.

    Written as D x D explicit multiply-adds on the batch-shaped entries: a broadcast
    product summed over an axis made XLA:CPU materialize the ``(..., D, D)`` product
    before a separate reduction (10 MB for UPGrad's ``(slices, 2^D, D, D, D)`` candidates
    on ResNet18's 620 slices at D = 5, the largest part of its rule's time, when
    :func:`box_minimum` still stacked its candidates).
    """
    num_domains = x.shape[-1]
    return jnp.stack([sum_list([matrix[..., a, b] * x[..., b] for b in range(num_domains)])
                      for a in range(num_domains)], axis=-1)


def inner(x: jax.Array, y: jax.Array) -> jax.Array:
    """:math:`\\sum_a x_a y_a` over the last axis, batched by broadcasting, as explicit
    multiply-adds: a short ``.sum(-1)`` became a library reduction call of about 50 us
    on XLA:CPU, which adds up inside the solvers' loops."""
    return sum_list([x[..., a] * y[..., a] for a in range(x.shape[-1])])


def last_sum(x: jax.Array) -> jax.Array:
    """:math:`\\sum_a x_a` over the last (short) axis, as explicit adds (:func:`inner`)."""
    return sum_list([x[..., a] for a in range(x.shape[-1])])


def last_all(x: jax.Array) -> jax.Array:
    """Whether every entry of the last (short) axis is True, as explicit ands."""
    out = x[..., 0]
    for a in range(1, x.shape[-1]):
        out = out & x[..., a]
    return out


def quadratic_form(x: jax.Array, matrix: jax.Array, y: jax.Array | None = None) -> jax.Array:
    """:math:`x^\\top M y` over the last axis (``y = x`` by default), batched by
    broadcasting, as explicit multiply-adds (:func:`matvec`)."""
    return inner(x, matvec(matrix, x if y is None else y))


def box_minimum(gram: jax.Array, lower: jax.Array) -> jax.Array:
    """:math:`\\arg\\min_v v^\\top G v` subject to :math:`v \\succeq u`, for every piece and
    every lower bound u: the dual form of the projection onto the dual cone of the rows
    (Quinton & Rey 2024, Proposition 1), by enumeration of the active sets.

    On an active set S the KKT conditions read :math:`v_S = u_S`,
    :math:`(G v)_F = 0` on the free set F, a linear system in :math:`v_F`. The candidate
    ``S`` = all domains is :math:`v = u`, always feasible.

    Args:
      gram: ``(K, D, D)`` positive definite matrices.
      lower: ``(K, R, D)`` or ``(R, D)`` lower bounds u.

    Returns:
      ``(K, R, D)`` minimizers.
    """
    num_pieces, num_domains, _ = gram.shape
    dtype = jnp.dtype(gram.dtype)
    lower = jnp.broadcast_to(lower, (num_pieces, *lower.shape[-2:])).astype(dtype)
    active = jnp.asarray(active_sets(num_domains))  # (S, D)
    # Every (K, S, R) array per domain, never stacked: a stacked (K, S, R, D) array and
    # its transposes took more time than the solves (DualProj at D=5 on 620 pieces:
    # 0.45 against 0.73-1.0 ms) and 0.3 s more to compile.
    entry = [[gram[:, a, b, None, None] for b in range(num_domains)]
             for a in range(num_domains)]  # (K, 1, 1)
    bound = [lower[:, None, :, a] for a in range(num_domains)]  # (K, 1, R): u
    on_set = [bound[a] * active[None, :, None, a] for a in range(num_domains)]  # u_S
    right = [jnp.where(active[None, :, None, a], on_set[a],
                       -sum_list([entry[a][b] * on_set[b] for b in range(num_domains)]))
             for a in range(num_domains)]  # u on S, -G u_S elsewhere
    trace = jnp.trace(gram, axis1=-2, axis2=-1)
    x, valid = solve_columns(gram[:, None], ~active[None], right,
                             (PIVOT_RTOL[dtype] * trace)[:, None])  # (K, S, R) each
    slack = FEASIBILITY_RTOL[dtype] * jnp.abs(lower).max((-2, -1))[:, None, None]
    feasible = valid[..., None]
    for a in range(num_domains):
        feasible = feasible & (x[a] >= bound[a] - slack)
    objective = sum_list([x[a] * sum_list([entry[a][b] * x[b] for b in range(num_domains)])
                          for a in range(num_domains)])  # x' G x
    best = jnp.argmin(jnp.where(feasible, objective, jnp.inf), axis=1)[:, None]  # (K, 1, R)
    return jnp.stack([jnp.take_along_axis(x[a], best, axis=1)[:, 0]
                      for a in range(num_domains)], axis=-1)


def pseudo_inverse(gram: jax.Array, rtol: float | None = None) -> jax.Array:
    """Moore-Penrose inverse of symmetric positive semi-definite matrices, from their
    eigendecomposition: eigenvalues at or below ``rtol * lambda_max`` count as zero
    (default ``D * eps``, the rule of ``torch.linalg.pinv`` for a D x D matrix)."""
    num_domains = gram.shape[-1]
    if rtol is None:
        rtol = num_domains * float(jnp.finfo(gram.dtype).eps)
    eigenvalues, vectors = jnp.linalg.eigh(gram)
    cutoff = rtol * eigenvalues[..., -1:]
    kept = eigenvalues > cutoff
    inverse = jnp.where(kept, 1 / jnp.where(kept, eigenvalues, 1), 0)
    return (vectors * inverse[..., None, :]) @ jnp.swapaxes(vectors, -1, -2)


def frank_wolfe_min_norm(gram: jax.Array, epsilon: jax.Array | float, max_iters: int
                         ) -> jax.Array:
    """Sener & Koltun's Algorithm 2 (Frank-Wolfe for the min-norm point of the convex
    hull), batched over pieces, exactly as ``torchjd.aggregation.MGDAWeighting`` runs it.

    From :math:`\\alpha = \\mathbb 1 / D`, each step moves toward the vertex
    :math:`t = \\arg\\min_i (G\\alpha)_i` by the exact line search on the segment,
    :math:`\\gamma = (\\alpha^\\top G \\alpha - (G\\alpha)_t) / (\\alpha^\\top G\\alpha +
    G_{tt} - 2 (G\\alpha)_t)` clipped to [0, 1]; a piece stops after the first step with
    :math:`\\gamma <` ``epsilon``, and all stop after ``max_iters`` steps.

    Returns:
      ``(K, D)`` weights on the simplex.
    """
    num_pieces, num_domains, _ = gram.shape
    dtype = gram.dtype
    diagonal = [gram[:, i, i] for i in range(num_domains)]

    def step(carry: tuple[jax.Array, jax.Array, jax.Array]
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        alpha, done, iteration = carry
        pushed = matvec(gram, alpha)  # (K, D): G alpha
        # t = argmin_i (G alpha)_i, the first of equals (or the first NaN, as argmin),
        # with a = (G alpha)_t and c = G_tt, in elementwise selects: an argmin and two
        # gathers were kernels of their own at every step.
        a, c, target = pushed[:, 0], diagonal[0], jnp.zeros((num_pieces,), jnp.int32)
        for i in range(1, num_domains):
            value = pushed[:, i]
            better = (value < a) | (jnp.isnan(value) & ~jnp.isnan(a))
            a = jnp.where(better, value, a)
            c = jnp.where(better, diagonal[i], c)
            target = jnp.where(better, i, target)
        b = inner(pushed, alpha)
        denominator = b + c - 2 * a
        gamma = jnp.where(c <= a, 1.0, jnp.where(
            b <= a, 0.0, (b - a) / jnp.where(denominator > 0, denominator, 1)))
        vertex = (target[:, None] == jnp.arange(num_domains)).astype(dtype)
        moved = (1 - gamma)[:, None] * alpha + gamma[:, None] * vertex
        alpha = jnp.where(done[:, None], alpha, moved)
        return alpha, done | (gamma < epsilon), iteration + 1

    def running(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, done, iteration = carry
        return (iteration < max_iters) & ~jnp.all(done)

    alpha = jnp.full((num_pieces, num_domains), 1 / num_domains, dtype)
    start = (alpha, jnp.zeros((num_pieces,), bool), jnp.zeros((), jnp.int32))
    alpha, _, _ = jax.lax.while_loop(running, step, start)
    return alpha


def simplex_candidates(z: jax.Array, valid: jax.Array, gram: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """The candidates of :func:`simplex_minimum` from the solutions
    :math:`z = (G + \\delta I)_{FF}^{-1} \\mathbb 1` on every support F: the points
    :math:`z / \\mathbb 1^\\top z` and the D vertices, with their :math:`w^\\top G w`
    (infinite where a point is infeasible).

    Args:
      z: ``(K, S, D)`` solutions on the S supports; ``valid``: ``(K, S)``, False where a
        support's system was singular.
      gram: ``(K, D, D)``, the matrix :math:`G` of the objective.

    Returns:
      ``(points, objective)``: ``(K, S + D, D)`` and ``(K, S + D)``.
    """
    total = last_sum(z)[..., None]
    points = z / jnp.where(total > 0, total, 1)
    feasible = valid & (total[..., 0] > 0) & last_all(
        points >= -FEASIBILITY_RTOL[jnp.dtype(gram.dtype)])
    points, feasible = with_vertices(points, feasible)
    return points, jnp.where(feasible, quadratic_form(points, gram[:, None]), jnp.inf)


def with_vertices(points: jax.Array, feasible: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(K, S, D)`` candidate points on the simplex and their ``(K, S)`` feasibility,
    followed by the D vertices :math:`e_i`, always feasible: ``(K, S + D, D)`` and
    ``(K, S + D)``."""
    num_pieces, _, num_domains = points.shape
    eye = jnp.broadcast_to(jnp.eye(num_domains, dtype=points.dtype),
                           (num_pieces, num_domains, num_domains))
    return (jnp.concatenate([points, eye], axis=1),
            jnp.concatenate([feasible, jnp.ones((num_pieces, num_domains), bool)], axis=1))


def simplex_minimum(gram: jax.Array, ridge: jax.Array | float = 0.0) -> jax.Array:
    """:math:`\\arg\\min_{w \\in \\Delta} w^\\top (G + \\delta I) w` for every piece: the
    min-norm point of the convex hull of the rows (Désidéri 2012), by enumeration of the
    supports.

    On a support F the KKT conditions :math:`(G + \\delta I)_{FF} w_F = \\lambda
    \\mathbb 1`, :math:`\\mathbb 1^\\top w_F = 1` give :math:`w_F = z / \\mathbb 1^\\top z`,
    :math:`z = (G + \\delta I)_{FF}^{-1} \\mathbb 1`; the feasible candidate of least
    :math:`w^\\top G w` wins (vertices are always feasible;
    :func:`simplex_candidates`). A ridge :math:`\\delta > 0` makes every support's system
    regular, so that a hull that holds 0 on a face of dependent rows gives a point of
    norm at most :math:`\\sqrt\\delta`.

    Args:
      gram: ``(K, D, D)`` positive semi-definite matrices.
      ridge: :math:`\\delta`, per piece or one for all.

    Returns:
      ``(K, D)`` weights on the simplex.
    """
    num_pieces, num_domains, _ = gram.shape
    dtype = jnp.dtype(gram.dtype)
    supports = jnp.asarray(active_sets(num_domains)[1:])  # every non-empty support
    ridge = jnp.broadcast_to(jnp.asarray(ridge, dtype), (num_pieces,))
    regular = gram + ridge[:, None, None] * jnp.eye(num_domains, dtype=dtype)
    trace = jnp.trace(gram, axis1=1, axis2=2)
    ones = jnp.broadcast_to(supports.astype(dtype)[None, :, :, None],
                            (num_pieces, *supports.shape, 1))
    z, valid = solve_on_subsets(regular[:, None], supports[None], ones,
                                (PIVOT_RTOL[dtype] * trace)[:, None])
    points, objective = simplex_candidates(z[..., 0], valid, gram)
    best = jnp.argmin(objective, axis=1)
    return jnp.take_along_axis(points, best[:, None, None], axis=1)[:, 0]
