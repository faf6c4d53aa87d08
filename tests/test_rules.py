"""Properties shared by the rules, checked once for all (torchjd's ``_asserts.py`` is the
model): no conflict gives the plain reduction, permutation of the domains, scaling,
non-conflict with every domain, element closed forms against the generic rule, the
reduction's scale, and options through ``optax.inject_hyperparams``."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_leaves
from oracle import slice_bounds

import corgrad_jax as cg
from corgrad_jax._src.dual_cone import sorted_decreasing
from corgrad_jax._src.solvers import active_sets

SHAPES = [(6, 4, 3), (7,), (13, 5), (2, 3)]
GRANULARITIES = ("model", "layer", "slice", "element")

# Each rule as a factory of its granularity; then its properties.
GRAM_RULES = {
    "corgrad": lambda g: cg.corgrad(4, None, granularity=g, shuffle=False),
    "upgrad": lambda g: cg.upgrad(granularity=g, num_slices=4),
    "dual_proj": lambda g: cg.dual_proj(granularity=g, num_slices=4),
    "mgda": lambda g: cg.mgda(granularity=g, num_slices=4),
    "cagrad": lambda g: cg.cagrad(0.5, granularity=g, num_slices=4),
    "imtl_g": lambda g: cg.imtl_g(granularity=g, num_slices=4),
    "aligned_mtl": lambda g: cg.aligned_mtl(granularity=g, num_slices=4),
    "con_fig": lambda g: cg.con_fig(granularity=g, num_slices=4),
    "grad_vac": lambda g: cg.grad_vac(3, granularity=g, num_slices=4, shuffle=False),
    "nash_mtl": lambda g: cg.nash_mtl(3, max_norm=0.0, granularity=g, num_slices=4),
}
ELEMENTWISE = {
    "agreement_sum": cg.agreement_sum,
    "and_mask": lambda: cg.and_mask(0.5),
    "grad_drop": lambda: cg.grad_drop(0.2, seed=3),
    "sand_mask": lambda: cg.sand_mask(0.5),
    "mean_gradients": cg.mean_gradients,
}
# The plain reduction each returns when no two domains conflict (None: not a property).
NO_CONFLICT = {"corgrad": "sum", "upgrad": "mean", "dual_proj": "mean", "grad_vac": "sum",
               "agreement_sum": "sum", "grad_drop": "sum", "mean_gradients": "mean",
               "and_mask": "mean"}
# u(c J) = c^degree u(J) for c > 0 (SAND-mask's variance breaks it).
DEGREE = {name: 1 for name in (*GRAM_RULES, *ELEMENTWISE)} | {"nash_mtl": 0, "sand_mask": None}
# Rules whose output does not depend on the order of the domains (those with a fixed
# visiting order, corgrad and grad_vac here, do).
EQUIVARIANT = ("upgrad", "dual_proj", "mgda", "cagrad", "imtl_g", "aligned_mtl", "con_fig",
               "nash_mtl", "agreement_sum", "and_mask", "sand_mask", "mean_gradients")


@pytest.fixture(autouse=True)
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# A transformation is pure, so each configuration is made once and reused: jax.jit then
# compiles its update once per input shape in a test process, not once per test.
@functools.cache
def make(name: str, granularity: str) -> optax.GradientTransformation:
    return GRAM_RULES[name](granularity) if name in GRAM_RULES else ELEMENTWISE[name]()


def apply(tx: optax.GradientTransformation, leaves: list[np.ndarray]) -> list[np.ndarray]:
    tree = {f"l{k}": jnp.asarray(x) for k, x in enumerate(leaves)}
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), tree)
    out, _ = jax.jit(tx.update)(tree, tx.init(params), params)
    return [np.asarray(out[f"l{k}"]) for k in range(len(leaves))]


def cases() -> list[tuple[str, str]]:
    return [(name, g) for name in GRAM_RULES for g in GRANULARITIES] + [
        (name, "element") for name in ELEMENTWISE]


@pytest.mark.parametrize("name,granularity",
                         [c for c in cases() if c[0] in NO_CONFLICT])
def test_no_conflict_gives_the_plain_reduction(name, granularity, rng):
    # Positive gradients conflict nowhere, at any granularity.
    leaves = [np.abs(x) + 0.1 for x in random_leaves(rng, 3, SHAPES)]
    got = apply(make(name, granularity), leaves)
    scale = 1.0 if NO_CONFLICT[name] == "sum" else 1 / 3
    for g, x in zip(got, leaves, strict=True):
        np.testing.assert_allclose(g, scale * x.sum(0), rtol=1e-9)


@pytest.mark.parametrize("name,granularity", [c for c in cases() if c[0] in EQUIVARIANT])
def test_permuting_the_domains_changes_nothing(name, granularity, rng):
    leaves = random_leaves(rng, 3, SHAPES)
    permuted = [x[[2, 0, 1]] for x in leaves]
    for a, b in zip(apply(make(name, granularity), leaves),
                    apply(make(name, granularity), permuted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(a).max())


@pytest.mark.parametrize("name,granularity",
                         [c for c in cases() if DEGREE[c[0]] is not None
                          and c != ("grad_vac", "element")])
def test_scaling_every_domain(name, granularity, rng):
    leaves = random_leaves(rng, 3, SHAPES)
    scale = 3.7
    degree = DEGREE[name]
    for a, b in zip(apply(make(name, granularity), leaves),
                    apply(make(name, granularity), [scale * x for x in leaves]), strict=True):
        # GradVac's eps = 1e-8 in its denominators is not scaled: emptied pieces keep
        # residues of about 1e-8 of the inputs (at element granularity, of the element,
        # which breaks the property there).
        np.testing.assert_allclose(b, scale**degree * a, rtol=1e-6,
                                   atol=1e-7 * np.abs(b).max())


@pytest.mark.parametrize("name", ["upgrad", "dual_proj", "mgda"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("num_domains", [2, 3, 5])
def test_no_domain_conflicts_with_the_update_in_any_piece(name, granularity, num_domains, rng):
    # MGDA with the exact solver, to rounding. UPGrad and DualProj up to their ridge
    # reg_eps: where the dual cone is thin the regularized projection may conflict by
    # up to about sqrt(reg_eps) max_j |g_j|^2 (a one-element piece of mixed signs: the
    # update is a ridge-sized residue of either sign).
    reg_eps = 1e-10
    tolerance = 1e-7 if name == "mgda" else 10 * np.sqrt(reg_eps)
    factory = {"upgrad": lambda: cg.upgrad(granularity=granularity, num_slices=4,
                                           reg_eps=reg_eps),
               "dual_proj": lambda: cg.dual_proj(granularity=granularity, num_slices=4,
                                                 reg_eps=reg_eps),
               "mgda": lambda: cg.mgda(granularity=granularity, num_slices=4,
                                       solver="exact")}[name]
    leaves = random_leaves(rng, num_domains, SHAPES, shared=0.1)
    for x in leaves:  # domain 1 opposes domain 0: conflicts at every granularity
        x[1] = -0.7 * x[0] + 0.3 * x[1]
    outputs = apply(factory(), leaves)
    if granularity == "model":
        pieces = [(np.concatenate([x.reshape(num_domains, -1) for x in leaves], 1),
                   np.concatenate([o.reshape(-1) for o in outputs]))]
    else:
        pieces = [(x.reshape(num_domains, -1)[:, a:b], o.reshape(-1)[a:b])
                  for x, o in zip(leaves, outputs, strict=True)
                  for a, b in slice_bounds(x.shape[1:], granularity, 4, "paper")]
    conflicts = 0
    for jacobian, update in pieces:
        norms = np.linalg.norm(jacobian, axis=1)
        assert np.all(jacobian @ update >= -tolerance * norms.max() ** 2), (name, granularity)
        conflicts += np.any((jacobian @ jacobian.T) < 0)
    assert conflicts > 0  # the data do conflict


@pytest.mark.parametrize("name", [n for n in GRAM_RULES if n not in ("grad_vac", "nash_mtl")])
@pytest.mark.parametrize("num_domains", [2, 3, 5])
def test_element_closed_form_equals_the_rule_on_rank_one_gram_matrices(name, num_domains,
                                                                         rng):
    # One-element slices run the generic rule on the (P, D, D) Gram matrices g g^T.
    leaves = random_leaves(rng, num_domains, [(40,), (3, 4)])
    leaves[0][:, :5] *= 1e-3  # some below torchjd's norm_eps threshold
    leaves[0][0, 5:8] = 0.0  # zero values
    leaves[0][:, 8] = [1.0] * num_domains  # equal values
    factory = {"corgrad": lambda g, n: cg.corgrad(n, 0.6, granularity=g, shuffle=False)}.get(
        name, lambda g, n: GRAM_RULES[name](g) if g == "element" else _sliced(name, n))
    closed = apply(factory("element", 10**6), leaves)
    generic = apply(factory("slice", 10**6), leaves)
    for a, b, x in zip(closed, generic, leaves, strict=True):
        # Where the exact answer is 0 the generic path leaves rounding residues (ConFIG's
        # 1 / ||direction|| of a direction of size 1e-16, say), of about 1e-8 here.
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * np.abs(x).max())


@pytest.mark.parametrize("num_domains", range(1, 9))
def test_sorting_network_sorts_every_input(num_domains, rng):
    # DualProj's closed form reads its candidate sets off this network. By the 0-1
    # principle a comparator network sorts every input if it sorts every 0-1 input, so
    # all 2^D of them are checked, then random values with ties.
    values = np.concatenate([active_sets(num_domains).T.astype(np.float32),
                             rng.integers(-2, 3, (num_domains, 1000)).astype(np.float32)], 1)
    out = np.stack(sorted_decreasing([jnp.asarray(row) for row in values]))
    np.testing.assert_array_equal(out, -np.sort(-values, axis=0))


@pytest.mark.parametrize("name", ["upgrad", "dual_proj"])
@pytest.mark.parametrize("scale", [1e-1, 1e14])
def test_normalized_closed_forms_scale_in_float32(name, scale, rng):
    # UPGrad and DualProj normalize G by its trace, so their closed forms are positively
    # homogeneous; in float32 they must stay so for gradients far from 1 (no product of
    # three or more gradient-sized factors, which overflows at |g| ~ 1e13).
    leaves = random_leaves(rng, 5, [(3, 3, 8, 1024)], dtype=np.float32)
    base = apply(GRAM_RULES[name]("element"), leaves)[0]
    scaled = apply(GRAM_RULES[name]("element"), [leaves[0] * np.float32(scale)])[0]
    assert np.all(np.isfinite(scaled))
    np.testing.assert_allclose(scaled, np.float32(scale) * base, rtol=2e-5,
                               atol=1e-6 * scale * np.abs(leaves[0]).max())


@pytest.mark.parametrize("name", [n for n in GRAM_RULES
                                  if n not in ("grad_vac", "nash_mtl", "corgrad")])
def test_element_closed_form_keeps_every_leaf_in_place(name, rng):
    # Leaves up to SMALL_LEAF elements go through the closed form concatenated: a large
    # leaf between small ones, against the generic rule on one-element slices.
    leaves = random_leaves(rng, 3, [(40,), (3, 3, 8, 1024), (7,), (3, 4)])
    leaves[1][:, :100] *= 1e-3  # some below torchjd's norm_eps threshold
    closed = apply(GRAM_RULES[name]("element"), leaves)
    generic = apply(_sliced(name, 10**6), leaves)
    for a, b, x in zip(closed, generic, leaves, strict=True):
        assert a.shape == x.shape[1:]
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * np.abs(x).max())


@pytest.mark.parametrize("name", [n for n in GRAM_RULES
                                  if n not in ("grad_vac", "nash_mtl", "corgrad")])
@pytest.mark.parametrize("num_domains", [3, 5])
def test_element_diagnostics_describe_the_update(name, num_domains, rng):
    # The share of opposite signs and ||u - u0|| / ||u0|| at element granularity, in
    # float32, against float64 sums of the update it returned: large leaves (one with a
    # tail of 17 past its blocks) between small ones, which are concatenated.
    leaves = random_leaves(rng, num_domains, [(40,), (3, 3, 8, 1024), (7,), (70_001,), (3, 4)],
                           dtype=np.float32)
    leaves[1][:, :100] *= 1e-3  # some below torchjd's norm_eps threshold
    leaves[3][0, :50] = 0.0
    tx = GRAM_RULES[name]("element")
    tree = {f"l{k}": jnp.asarray(x) for k, x in enumerate(leaves)}
    out, state = jax.jit(tx.update)(tree, tx.init(None))
    update = np.concatenate([np.asarray(out[f"l{k}"], np.float64).ravel()
                             for k in range(len(leaves))])
    values = np.concatenate([x.reshape(num_domains, -1) for x in leaves], axis=1).astype(np.float64)
    plain = values.sum(0) / (1 if name == "con_fig" else num_domains)
    pairs = 2 * (values > 0).sum(0) * (values < 0).sum(0)
    assert float(state.modification_frequency) == pytest.approx(
        pairs.sum() / (values.shape[1] * num_domains * (num_domains - 1)), rel=1e-6)
    assert float(state.modification_ratio) == pytest.approx(
        np.linalg.norm(update - plain) / np.linalg.norm(plain), rel=1e-4, abs=1e-6)


@functools.cache
def _sliced(name: str, num_slices: int) -> optax.GradientTransformation:
    factories = {
        "upgrad": lambda: cg.upgrad(granularity="slice", num_slices=num_slices),
        "dual_proj": lambda: cg.dual_proj(granularity="slice", num_slices=num_slices),
        "mgda": lambda: cg.mgda(granularity="slice", num_slices=num_slices),
        "cagrad": lambda: cg.cagrad(0.5, granularity="slice", num_slices=num_slices),
        "imtl_g": lambda: cg.imtl_g(granularity="slice", num_slices=num_slices),
        "aligned_mtl": lambda: cg.aligned_mtl(granularity="slice", num_slices=num_slices),
        "con_fig": lambda: cg.con_fig(granularity="slice", num_slices=num_slices),
    }
    return factories[name]()


@pytest.mark.parametrize("name", sorted(GRAM_RULES))
@pytest.mark.parametrize("granularity", ["layer", "element"])
def test_reduction_sum_is_d_times_mean(name, granularity, rng):
    leaves = random_leaves(rng, 3, SHAPES)
    for total, mean in zip(apply(_reduced(name, granularity, "sum"), leaves),
                           apply(_reduced(name, granularity, "mean"), leaves), strict=True):
        np.testing.assert_allclose(total, 3 * mean, rtol=1e-9, atol=1e-12)


@functools.cache
def _reduced(name: str, granularity: str, reduction: str) -> optax.GradientTransformation:
    if name == "corgrad":
        return cg.corgrad(4, None, granularity=granularity, reduction=reduction, shuffle=False)
    if name == "grad_vac":
        return cg.grad_vac(3, granularity=granularity, reduction=reduction, shuffle=False)
    if name == "nash_mtl":
        return cg.nash_mtl(3, granularity=granularity, reduction=reduction)
    if name == "cagrad":
        return cg.cagrad(0.5, granularity=granularity, reduction=reduction)
    return getattr(cg, name)(granularity=granularity, reduction=reduction)


def test_options_are_injectable_hyperparameters(rng):
    leaves = random_leaves(rng, 3, SHAPES)
    tree = {f"l{k}": jnp.asarray(x) for k, x in enumerate(leaves)}
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), tree)
    cases = [
        (cg.cagrad, {"c": 0.5}, {"c": 1.5}, ("granularity", "num_slices", "rescale",
                                              "reduction")),
        (cg.upgrad, {"reg_eps": 1e-4}, {"reg_eps": 1e-2}, ("granularity", "num_slices",
                                                             "reduction")),
        (cg.sand_mask, {"tau": 0.5, "k": 10.0}, {"tau": 0.2, "k": 10.0}, ()),
        (cg.grad_drop, {"leak": 0.0}, {"leak": 0.5}, ("seed",)),
        (_layer_grad_vac, {"beta": 0.5}, {"beta": 0.9}, ("shuffle",)),
    ]
    for factory, first, second, static in cases:
        injected = optax.inject_hyperparams(factory, static_args=static)(**first)
        state = injected.init(params)
        out, state = jax.jit(injected.update)(tree, state, params)
        direct = factory(**first)
        expected, _ = jax.jit(direct.update)(tree, direct.init(params), params)
        chex.assert_trees_all_close(out, expected, rtol=1e-9, atol=1e-12)
        for key, value in second.items():
            state.hyperparams[key] = jnp.asarray(value)
        changed, _ = jax.jit(injected.update)(tree, state, params)
        assert not np.allclose(np.asarray(changed["l0"]), np.asarray(out["l0"]))


def _layer_grad_vac(beta: float, shuffle: bool = True) -> optax.GradientTransformation:
    return cg.grad_vac(3, beta, granularity="layer", shuffle=shuffle)


def test_stateful_rules_name_what_init_needs():
    with pytest.raises(ValueError, match="call init with the parameters"):
        cg.grad_vac(3).init(None)
    tx = cg.grad_vac(3, granularity="layer")
    state = tx.init({"a": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"made for 1 piece\(s\), but these gradients have 2"):
        tx.update({"a": jnp.ones((3, 4)), "b": jnp.ones((3, 2))}, state)
    with pytest.raises(ValueError, match="num_domains=3, but the gradients stack D=2"):
        tx.update({"a": jnp.ones((2, 4))}, state)


def test_bad_options_raise():
    for call, message in [
        (lambda: cg.upgrad(reg_eps=0.0), "reg_eps must be > 0"),
        (lambda: cg.upgrad(granularity="neuron"), "Unknown granularity 'neuron'"),
        (lambda: cg.cagrad(-1.0), "c must be >= 0"),
        (lambda: cg.cagrad(rescale="twice"), "Unknown rescale 'twice'"),
        (lambda: cg.aligned_mtl(scale_mode="max"), "Unknown scale_mode 'max'"),
        (lambda: cg.grad_vac(3, beta=1.5), r"beta must be \[0.0, 1.0\]"),
        (lambda: cg.grad_vac(1), "num_domains must be an int >= 2"),
        (lambda: cg.nash_mtl(3, update_weights_every=0), "update_weights_every must be"),
        (lambda: cg.mgda(max_iters=0), "max_iters must be an int >= 1"),
        (lambda: cg.mgda(solver="qp"), "Unknown solver 'qp'"),
        (lambda: cg.grad_drop(leak=2.0), r"leak must lie in \[0, 1\]"),
        (lambda: cg.sand_mask(tau=1.5), r"tau must lie in \[0, 1.0\]"),
        (lambda: cg.dual_proj(reduction="max"), "Unknown reduction 'max'"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def test_the_registry_describes_every_rule():
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.ones((3, 4, 3)), "b": jnp.arange(9.0).reshape(3, 3)}
    assert len({info.name for info in cg.RULES}) == len(cg.RULES)
    for info in cg.RULES:
        assert getattr(cg, info.name) is info.factory
        args = (3,) if info.needs_num_domains else ()
        kwargs = {"granularity": "layer", "num_slices": 2} if info.takes_granularity else {}
        tx = info.factory(*args, **kwargs)
        update = jax.jit(tx.update)  # one compile for both calls (eager: op by op)
        out, _ = update(grads, tx.init(params), params)
        chex.assert_trees_all_equal_shapes(out, params)
        if info.takes_granularity:  # all equal, positive domains: the plain reduction
            plain = 1.0 if info.native_reduction == "sum" else 1 / 3
            same = {"w": jnp.ones((3, 4, 3)), "b": jnp.ones((3, 3))}
            if info.name not in ("cagrad", "nash_mtl"):
                out, _ = update(same, tx.init(params), params)
                expected = {name: 3 * plain * x[0] for name, x in same.items()}
                chex.assert_trees_all_close(out, expected, rtol=1e-5)
