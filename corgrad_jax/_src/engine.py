"""The one engine behind every Gram rule: pieces, their Gram matrices, a rule, the sum.

Most conflict rules combine each piece's per-domain gradients linearly, with
coefficients that depend on the gradients only through their inner products. For a
piece k (a part of a layer, docs/algorithm.md, Sec. 2) with per-domain gradients
:math:`g_1^k, \\dots, g_D^k` and Gram matrix :math:`G^k_{ab} = \\langle g_a^k, g_b^k\\rangle`,
a *Gram rule* computes either

* weights :math:`w^k = \\rho(G^k) \\in \\mathbb R^D` (UPGrad, MGDA, CAGrad, ...), and the
  piece's update is :math:`u^k = \\sum_m w^k_m g_m^k`; or
* per-domain coefficients :math:`c^k \\in \\mathbb R^{D \\times D}` (PCGrad, CorGrad,
  GradVac: domain i's corrected gradient is :math:`\\sum_m c^k_{im} g_m^k`), and
  :math:`u^k = \\sum_i \\sum_m c^k_{im} g_m^k`.

So one engine serves every rule at every granularity (:func:`gram_transformation`):

1. *layering and slicing* cut every leaf into pieces
   (:class:`~corgrad_jax._src.pieces.PieceLayout`);
2. the *Gram pass* reads the data once for all ``(K, D, D)`` Gram matrices;
3. the *rule* maps them (and its state) to coefficients, batched over the pieces; at
   ``granularity="model"`` it sees one Gram matrix, the sum over all pieces;
4. the *combine pass* reads the data once more and writes :math:`u`.

At ``granularity="element"`` every piece is one scalar and :math:`G = g g^\\top` has rank
one; a rule may then give a closed form of :math:`u` as an elementwise function of the
D values (:attr:`GramRule.element`), which reads the data once instead of building
``(P, D, D)`` arrays.

Scale: every rule has a *native* reduction, the scale of its reference implementation
(``"sum"``: weights near 1 per domain, as PCGrad's sum of projections; ``"mean"``: weights
summing to about 1, as UPGrad's mean of projections). With ``reduction`` equal to it the
output is the reference's; otherwise it is multiplied by D (mean to sum) or 1/D.

``docs/aggregators.md`` specifies every rule, its scale and its closed form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from corgrad_jax._src import base
from corgrad_jax._src.element_passes import element_sums, unfused_in_turn
from corgrad_jax._src.pieces import GRANULARITIES, SMALL_LEAF, VARIANTS, PieceLayout

REDUCTIONS = ("sum", "mean")


class RuleInputs(NamedTuple):
    """What a rule sees besides the Gram matrices it acts on.

    Attributes:
      piece_gram: ``(K, D, D)`` Gram matrices of every piece (at ``"model"`` granularity,
        of every leaf), in the engine's piece order; None at element granularity.
      layer_of_piece: ``(K,)`` static leaf index of every piece.
      num_layers: the number of leaves.
      count: the step count (for schedules).
      key: a fresh PRNG key for this step.
      state: the rule's own state (``()`` for stateless rules).
    """

    piece_gram: jax.Array | None
    layer_of_piece: np.ndarray
    num_layers: int
    count: jax.Array
    key: jax.Array
    state: Any


class RuleResult(NamedTuple):
    """A rule's output: ``(K', D)`` weights or ``(K', D, D)`` per-domain coefficients,
    with ``K'`` the number of Gram matrices it was given (1 at model granularity) or K;
    its diagnostics (None: the engine's default, :func:`weighting_diagnostics`); and its
    new state."""

    coefficients: jax.Array
    diagnostics: base.Diagnostics | None = None
    state: Any = ()


ElementFn = Callable[[list[jax.Array], RuleInputs],
                     tuple[list[jax.Array], base.Diagnostics, Any]]
"""``(flats (D, P) per leaf, inputs) -> (updates (P,) per leaf, diagnostics, state)`` at
the rule's native scale."""


@dataclasses.dataclass(frozen=True)
class GramRule:
    """A conflict rule that acts on piece Gram matrices.

    Attributes:
      coefficients: ``(gram (K', D, D), inputs) -> RuleResult``, batched over pieces.
      native_reduction: ``"sum"`` or ``"mean"``, the scale of the rule's reference.
      element: the closed form at element granularity, or None to run ``coefficients``
        on the ``(P, D, D)`` rank-one Gram matrices.
      init_state: ``num_gram_matrices -> state`` for a rule that carries state (its leaves
        have that leading size), or None.
    """

    coefficients: Callable[[jax.Array, RuleInputs], RuleResult]
    native_reduction: str
    element: ElementFn | None = None
    init_state: Callable[[int], Any] | None = None


def check_gram_options(num_slices: Any, granularity: str, reduction: str,
                       variant: str = "paper") -> None:
    """Raises on bad engine options, naming the option and the accepted values."""
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


def check_range(name: str, value: Any, low: float, high: float = float("inf")) -> None:
    """Raises unless ``low <= value <= high``; traced values (from
    :func:`optax.inject_hyperparams`) pass, as their source checks them."""
    try:
        number = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if not low <= number <= high:
        bounds = f"[{low}, {high}]" if high < float("inf") else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}.")


def reduction_factor(native: str, reduction: str, num_domains: int) -> float:
    """What turns a rule's native scale into ``reduction``'s."""
    if native == reduction:
        return 1.0
    return float(num_domains) if reduction == "sum" else 1.0 / num_domains


def conflict_share(gram: jax.Array) -> jax.Array:
    """Share of the ordered pairs ``(i, j != i)`` of every piece with a negative inner
    product (the paper's eq. 3 on the input gradients)."""
    num_pieces, num_domains, _ = gram.shape
    off_diagonal = ~np.eye(num_domains, dtype=bool)
    negative = (gram < 0) & off_diagonal
    return negative.sum(dtype=jnp.float32) / max(num_pieces * num_domains * (num_domains - 1), 1)


def weighting_diagnostics(weights: jax.Array, piece_gram: jax.Array, conflict_gram: jax.Array,
                          plain: float) -> base.Diagnostics:
    """The diagnostics of a weighting rule, from Gram matrices only.

    ``modification_frequency`` is :func:`conflict_share` of the Gram matrices the rule
    acted on; ``modification_ratio`` is :math:`\\|u - u_0\\| / \\|u_0\\|` over the whole
    model, with :math:`u_0 = \\text{plain} \\sum_m g_m` the plain sum or mean:
    :math:`\\|\\sum_m v_m g_m\\|^2 = v^\\top G v` for :math:`v = w - \\text{plain}`.
    """
    change = weights - plain
    change2 = jnp.einsum("ka,kab,kb->", change, piece_gram, change)
    plain2 = plain**2 * piece_gram.sum()
    safe_plain2 = jnp.where(plain2 > 0, plain2, 1)
    ratio = jnp.where(plain2 > 0, jnp.sqrt(jnp.maximum(change2, 0) / safe_plain2), 0)
    return base.Diagnostics(conflict_share(conflict_gram), ratio, jnp.zeros((), jnp.float32))


def state_dtype() -> jnp.dtype:
    """float64 when JAX runs with 64-bit types enabled, float32 otherwise."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def gram_transformation(
    rule: GramRule,
    *,
    granularity: str,
    num_slices: int,
    reduction: str,
    seed: int,
    name: str,
    variant: str = "paper",
) -> optax.GradientTransformationExtraArgs:
    """The one engine: a :class:`GramRule` as an optax transformation at any granularity.

    Args:
      rule: the rule.
      granularity: ``"model"``, ``"layer"``, ``"slice"`` or ``"element"``
        (docs/algorithm.md, Sec. 2).
      num_slices: slices per leaf at ``"slice"`` granularity.
      reduction: ``"sum"`` or ``"mean"`` over domains (see the module docstring).
      seed: seed of the PRNG key in the state.
      name: the transformation's name in error messages.
      variant: ``"paper"`` slicing (contiguous slices of the flattened leaf) or
        ``"official"`` (``torch.chunk`` along axis 0, CorGrad's official code).
    """
    check_gram_options(num_slices, granularity, reduction, variant)
    model = granularity == "model"

    def layout_of(shapes: Sequence[Sequence[int]]) -> PieceLayout:
        return PieceLayout.of(shapes, granularity=granularity, num_slices=num_slices,
                              variant=variant)

    def num_rule_pieces(layout: PieceLayout) -> int:
        return 1 if model else layout.num_pieces

    def init_rule_state(params: chex.ArrayTree) -> Any:
        assert rule.init_state is not None
        if params is None:
            raise ValueError(
                f"{name} keeps a state per piece: call init with the parameters (or arrays of "
                "their shapes), not None, so that it can count the pieces.")
        shapes = [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(params)]
        return rule.init_state(num_rule_pieces(layout_of(shapes)))

    def aggregate(
        leaves: Sequence[jax.Array], state: base.StackedGradientState, key: jax.Array
    ) -> tuple[list[jax.Array], base.Diagnostics, Any]:
        num_domains = leaves[0].shape[0]
        layout = layout_of([leaf.shape[1:] for leaf in leaves])
        if rule.init_state is not None:
            expected = num_rule_pieces(layout)
            for leaf in jax.tree_util.tree_leaves(state.rule_state):
                if leaf.shape[0] != expected:
                    raise ValueError(
                        f"{name}: its state was made for {leaf.shape[0]} piece(s), but these "
                        f"gradients have {expected} at granularity={granularity!r}: init "
                        "with parameters of the gradients' shapes.")
        flats = [leaf.reshape(num_domains, -1) for leaf in leaves]
        factor = reduction_factor(rule.native_reduction, reduction, num_domains)
        inputs = RuleInputs(None, layout.layer_of_piece, len(leaves), state.count, key,
                            state.rule_state)
        if granularity == "element" and rule.element is not None:
            outputs, diagnostics, rule_state = rule.element(flats, inputs)
            if factor != 1.0:
                outputs = [out * factor for out in outputs]
        else:
            # 2. The Gram pass: every piece's D x D Gram matrix.
            gram = layout.gram(flats)
            conflict_gram = gram.sum(0, keepdims=True) if model else gram
            # 3. The rule, batched over the pieces (one piece for the whole model).
            result = rule.coefficients(conflict_gram, inputs._replace(piece_gram=gram))
            weights = result.coefficients
            weights = weights.sum(1) if weights.ndim == 3 else weights  # sum_i c[k, i, m]
            weights = jnp.broadcast_to(weights, (gram.shape[0], num_domains))
            diagnostics = result.diagnostics
            if diagnostics is None:
                plain = 1.0 if rule.native_reduction == "sum" else 1.0 / num_domains
                diagnostics = weighting_diagnostics(weights, gram, conflict_gram, plain)
            rule_state = result.state
            # 4. The combine pass: u^k = sum_m w[k, m] g_m^k.
            outputs = layout.combine(flats, weights * factor if factor != 1.0 else weights)
        outputs = [out.reshape(leaf.shape[1:]) for out, leaf in zip(outputs, leaves, strict=True)]
        if rule.init_state is not None:
            rule_state = jax.tree.map(lambda new, old: new.astype(old.dtype), rule_state,
                                      state.rule_state)
        return outputs, diagnostics, rule_state

    return base.stacked_transformation(
        aggregate, seed=seed, name=name,
        init_rule_state=None if rule.init_state is None else init_rule_state)


def element_diagnostics(flats: Sequence[jax.Array], updates: Sequence[jax.Array],
                        plain: float) -> base.Diagnostics:
    """:func:`weighting_diagnostics` at element granularity, from the values and the
    update written: the share of ordered domain pairs of opposite signs over all
    elements, and :math:`\\|u - u_0\\| / \\|u_0\\|` with :math:`u_0` the plain sum or
    mean; one pass (:func:`~corgrad_jax._src.element_passes.element_sums`) per leaf.

    Args:
      flats: ``(D, P)`` values of each leaf (or group of leaves).
      updates: the ``(P,)`` update of each, already computed, in a loop that XLA cannot
        fuse into this pass (:func:`elementwise`).
      plain: 1 (:math:`u_0` the sum) or 1/D (the mean).
    """
    num_domains = flats[0].shape[0]
    # Every sum in one float type, at least float32, the pair count included: exact
    # while a partial sum stays under 2^24 in float32, within float32 rounding beyond
    # (as the frequency is). With the counts' arithmetic in int32 beside the float sums,
    # XLA:CPU (jax 0.10) ran this pass 1.5-2x slower, and one reduction takes no float
    # types of different precisions. (Where a count is only a cast mask, as in the
    # sign-agreement rules' diagnostics, a float count was no faster: 3.89 against
    # 3.99x the ERM mean for Agr-Sum, D=3.)
    dtype = jnp.promote_types(flats[0].dtype, jnp.float32)

    def terms(values: list[jax.Array], others: list[jax.Array]) -> list[jax.Array]:
        positive = sum((v > 0).astype(dtype) for v in values)
        negative = sum((v < 0).astype(dtype) for v in values)
        baseline = (plain * base.domain_sum(jnp.stack(values))).astype(dtype)
        return [2 * positive * negative, jnp.square(others[0].astype(dtype) - baseline),
                jnp.square(baseline)]

    pairs = change2 = plain2 = jnp.zeros((), dtype)
    for flat, update in zip(flats, updates, strict=True):
        if not flat.shape[1]:
            continue
        leaf_pairs, leaf_change2, leaf_plain2 = element_sums(flat, terms, [update])
        pairs, change2, plain2 = pairs + leaf_pairs, change2 + leaf_change2, plain2 + leaf_plain2
    size = sum(flat.shape[1] for flat in flats)
    frequency = pairs.astype(jnp.float32) / max(size * num_domains * (num_domains - 1), 1)
    ratio = jnp.where(plain2 > 0, jnp.sqrt(change2 / jnp.where(plain2 > 0, plain2, 1)), 0)
    return base.Diagnostics(frequency, ratio, jnp.zeros((), jnp.float32))


def elementwise(closed_form: Callable[[list[jax.Array]], jax.Array], native_reduction: str
                ) -> ElementFn:
    """An :data:`ElementFn` from a closed form ``values -> update``, where ``values`` are
    the D per-domain ``(P,)`` arrays of a leaf, with :func:`element_diagnostics`.

    Each leaf's update is computed in a loop of its own, the leaves in turn
    (:func:`~corgrad_jax._src.element_passes.unfused_in_turn`), and the diagnostics'
    pass reads it. Left to itself, XLA fuses the closed form into that reduction, which
    XLA:CPU runs one element at a time unless it may reassociate float sums; reading
    the update instead made the element forms 1.3-2.1x faster by default, for every
    rule but Aligned-MTL (README, Performance)."""

    def element(flats: list[jax.Array], inputs: RuleInputs
                ) -> tuple[list[jax.Array], base.Diagnostics, Any]:
        num_domains = flats[0].shape[0]
        # The small leaves (biases, norms) are concatenated and go through the closed
        # form as one: a copy of a few percent of the model, and one fused loop for them
        # instead of one per leaf, so that the compile time does not grow with their count.
        small = [k for k, flat in enumerate(flats) if flat.shape[1] <= SMALL_LEAF]
        large = [k for k in range(len(flats)) if k not in small]
        groups = [flats[k] for k in large]
        if small:
            groups.append(jnp.concatenate([flats[k] for k in small], axis=1))
        results = unfused_in_turn([lambda rows: closed_form(list(rows))] * len(groups), groups)
        outputs = dict(zip(large, results[:len(large)], strict=True))
        if small:
            ends = np.cumsum([0] + [flats[k].shape[1] for k in small])
            for k, start, stop in zip(small, ends[:-1], ends[1:], strict=True):
                outputs[k] = results[-1][start:stop]
        plain = 1.0 if native_reduction == "sum" else 1.0 / num_domains
        return ([outputs[k] for k in range(len(flats))],
                element_diagnostics(groups, results, plain), inputs.state)

    return element
