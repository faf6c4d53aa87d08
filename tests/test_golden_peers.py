"""Every rule against its peers' own code: torchjd 0.18.0, LibMTL and DomainBed.

The fixture was written by ``tools/make_aggregator_golden.py`` with the peers' code on
float64 Jacobians (D = 2..6: random, rank-deficient, a zero row, equal rows, conflicting,
aligned), and on small pytrees cut at layer, slice and element granularity with the
reference applied piece by piece. The tests need neither torch nor that code.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracle import slice_bounds

import corgrad_jax as cg
from corgrad_jax._src.agreement import grad_drop_update

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "aggregator_golden.npz")
DATA = np.load(FIXTURE, allow_pickle=False)
CASES = sorted({key.split("/")[1] for key in DATA.files if key.startswith("model/")})

# fixture name -> (factory(D, granularity), relative tolerance). CAGrad's reference is an
# interior-point solve (CLARABEL, tightened to 1e-12), accurate to about 1e-6 on the
# flat optimum; the test below checks that ours is at least as optimal.
RULES = {
    "upgrad": (lambda d, g: cg.upgrad(granularity=g, num_slices=4), 1e-6),
    "dual_proj": (lambda d, g: cg.dual_proj(granularity=g, num_slices=4), 1e-6),
    "mgda": (lambda d, g: cg.mgda(granularity=g, num_slices=4), 1e-6),
    "cagrad_c0.5_tight": (lambda d, g: cg.cagrad(0.5, granularity=g, num_slices=4), 2e-6),
    "cagrad_c2_tight": (lambda d, g: cg.cagrad(2.0, granularity=g, num_slices=4), 2e-6),
    "imtl_g": (lambda d, g: cg.imtl_g(granularity=g, num_slices=4), 1e-6),
    "aligned_mtl_min": (lambda d, g: cg.aligned_mtl(granularity=g, num_slices=4), 1e-6),
    "aligned_mtl_median": (lambda d, g: cg.aligned_mtl(scale_mode="median", granularity=g,
                                                       num_slices=4), 1e-6),
    "aligned_mtl_rmse": (lambda d, g: cg.aligned_mtl(scale_mode="rmse", granularity=g,
                                                     num_slices=4), 1e-6),
    "con_fig": (lambda d, g: cg.con_fig(granularity=g, num_slices=4), 1e-6),
    "pcgrad": (lambda d, g: cg.corgrad(4, None, granularity=g, shuffle=False), 1e-6),
    "grad_vac": (lambda d, g: cg.grad_vac(d, granularity=g, num_slices=4, shuffle=False), 1e-6),
    "nash_mtl": (lambda d, g: cg.nash_mtl(d, granularity=g, num_slices=4), 1e-6),
    "nash_mtl_no_clip": (lambda d, g: cg.nash_mtl(d, max_norm=0.0, granularity=g,
                                                  num_slices=4), 1e-6),
}
STATEFUL = ("grad_vac", "nash_mtl", "nash_mtl_no_clip")
TIGHT = {"cagrad_c0.5_tight": "cagrad_c0.5", "cagrad_c2_tight": "cagrad_c2"}


@functools.cache
def cached(factory: Callable[..., optax.GradientTransformation], *args: object,
           **kwargs: object) -> optax.GradientTransformation:
    """``factory(*args, **kwargs)``, made once per configuration: a transformation is
    pure, so the fixture's cases of one shape share it, and its update compiles once for
    them, not once per case."""
    return factory(*args, **kwargs)


@pytest.fixture(autouse=True)
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def run_steps(tx, trees, params):
    """The outputs of ``tx`` on successive stacked-gradient pytrees, state carried."""
    state = tx.init(params)
    outputs = []
    for tree in trees:
        out, state = jax.jit(tx.update)(jax.tree.map(jnp.asarray, tree), state)
        outputs.append(jax.tree.map(np.asarray, out))
    return outputs


def bargaining_solved(jacobian: np.ndarray, update: np.ndarray) -> bool:
    """Whether an unclipped Nash-MTL output solves alpha_i (G alpha)_i = 1: where the
    domain gradients are dependent there is no solution and the reference's solver
    returns what its last convex program left (or the previous step's weights)."""
    alpha = np.linalg.lstsq(jacobian.T, update, rcond=None)[0]
    return bool(np.allclose(alpha * (jacobian @ jacobian.T @ alpha), 1, atol=1e-6))


def assert_close(got, expected, rtol, message, inputs=None):
    """Equal to ``rtol`` relative to the expected values or, where they are rounding
    residues (an emptied piece), to the inputs' scale."""
    scale = max(np.abs(expected).max(), 0 if inputs is None else np.abs(inputs).max(), 1e-300)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale, err_msg=message)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("case", CASES)
def test_model_granularity_equals_torchjd(name, case):
    steps = DATA[f"model/{case}/jacobian"]
    num_domains, size = steps.shape[1:]
    make, rtol = RULES[name]
    expected = DATA[f"model/{case}/{name}"]
    stateful = name in STATEFUL
    trees = [{"w": step} for step in (steps if stateful else steps[:1])]
    outputs = run_steps(cached(make, num_domains, "model"), trees, {"w": np.zeros(size)})
    for step, out in enumerate(outputs):
        reference = expected[step] if stateful else expected
        if name.startswith("nash_mtl") and not bargaining_solved(
                steps[step], DATA[f"model/{case}/nash_mtl_no_clip"][step]):
            assert np.all(np.isfinite(out["w"]))
            continue
        assert_close(out["w"], reference, rtol, f"{name} {case} step {step}", steps[step])


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("random")])
@pytest.mark.parametrize("c", [0.5, 2.0])
def test_cagrad_is_at_least_as_optimal_as_the_reference(case, c):
    # CAGrad's dual: min over the simplex of b.w + phi sqrt(w G w), G trace-normalized.
    jacobian = DATA[f"model/{case}/jacobian"][0]
    num_domains = jacobian.shape[0]
    gram = jacobian @ jacobian.T
    gram = gram / np.trace(gram)
    b, phi = gram.sum(1) / num_domains, c * np.sqrt(gram.sum()) / num_domains

    def dual(update):  # update = J^T (1/D + s w): recover w on the simplex
        weights = np.linalg.lstsq(jacobian.T, update, rcond=None)[0] - 1 / num_domains
        w = weights / weights.sum()
        assert np.all(w >= -1e-6)
        return b @ w + phi * np.sqrt(w @ gram @ w)

    name = "cagrad_c0.5" if c == 0.5 else "cagrad_c2"
    tx = cached(cg.cagrad, c)
    ours = run_steps(tx, [{"w": jacobian}], None)[0]["w"]
    for key in (name, f"{name}_tight"):
        assert dual(ours) <= dual(DATA[f"model/{case}/{key}"]) + 1e-13
    assert_close(ours, DATA[f"model/{case}/{name}"], 1e-3, "default CLARABEL tolerance")


TREES = sorted({key.split("/")[0] for key in DATA.files if not key.startswith("model/")})


def tree_steps(tree):
    num_leaves = int(DATA[f"{tree}/num_leaves"])
    steps = [[DATA[f"{tree}/in{step}/{k}"] for k in range(num_leaves)] for step in range(3)]
    return [{f"l{k}": leaf for k, leaf in enumerate(step)} for step in steps]


PIECE_CASES = sorted({(key.split("/")[0], key.split("/")[1], key.split("/")[2])
                      for key in DATA.files
                      if key.split("/")[1] in ("layer", "slice", "element")})


@pytest.mark.parametrize("tree,granularity,name", PIECE_CASES)
def test_every_piece_equals_the_reference_on_that_piece(tree, granularity, name):
    if name not in RULES:
        pytest.skip("only the default-tolerance CAGrad, checked at model granularity")
    steps = tree_steps(tree)
    num_domains = steps[0]["l0"].shape[0]
    make, rtol = RULES[name]
    stateful = name in STATEFUL
    params = jax.tree.map(lambda x: np.zeros(x.shape[1:]), steps[0])
    outputs = run_steps(cached(make, num_domains, granularity),
                        steps if stateful else steps[:1], params)
    # GradVac empties a one-element piece that conflicts to a rounding residue, whose
    # cosine with the other domain (its eps-damped magnitude) becomes the next step's
    # target: after step 0, both implementations follow their own residues there (at
    # element granularity, and in the one-element slices of small leaves).
    follows_residues = name == "grad_vac"
    for step, out in enumerate(outputs):
        for k in range(len(steps[0])):
            leaf = steps[step][f"l{k}"]
            expected = DATA[f"{tree}/{granularity}/{name}/out{step}/{k}"]
            got = out[f"l{k}"]
            flat_leaf = leaf.reshape(num_domains, -1)
            for start, stop in slice_bounds(leaf.shape[1:], granularity, 4, "paper"):
                piece = flat_leaf[:, start:stop]
                if follows_residues and step > 0 and stop - start == 1:
                    continue
                if name.startswith("nash_mtl"):
                    unclipped = DATA[f"{tree}/{granularity}/nash_mtl_no_clip/out{step}/{k}"]
                    if not bargaining_solved(piece, unclipped.reshape(-1)[start:stop]):
                        continue
                assert_close(got.reshape(-1)[start:stop], expected.reshape(-1)[start:stop],
                             rtol, f"{name} {tree} {granularity} step {step} leaf {k} "
                                   f"piece {start}:{stop}", piece)


@pytest.mark.parametrize("case", CASES)
def test_libmtl_cagrad_and_its_rescalings(case):
    jacobian = DATA[f"model/{case}/jacobian"][0]
    if case in ("zero_row_d3", "rank2_d4", "zero_inside_d3"):
        # A zero domain gradient (or 0 in the hull with the optimum there): torchjd
        # returns 0, LibMTL the (rescaled) mean; this library follows torchjd.
        pytest.skip("LibMTL and torchjd differ by design here")
    for c, rescale, option in ((0.5, 0, "none"), (0.5, 1, "quadratic"), (0.4, 2, "linear")):
        tx = cached(cg.cagrad, c, rescale=option)
        out = run_steps(tx, [{"w": jacobian}], None)[0]["w"]
        # LibMTL solves with SLSQP (about 1e-5) and adds 1e-8 to its norms.
        assert_close(out, DATA[f"model/{case}/libmtl_cagrad_c{c}_rescale{rescale}"], 2e-4,
                     f"{case} c={c} rescale={rescale}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("group_type,granularity", [(0, "model"), (2, "layer")])
def test_libmtl_grad_vac_group_types_are_granularities(case, group_type, granularity):
    steps = DATA[f"model/{case}/jacobian"]
    num_domains = steps.shape[1]
    # LibMTL's stand-in model has two parameters: the first 4 entries and the rest.
    trees = [{"a": step[:, :4], "b": step[:, 4:]} for step in steps]
    tx = cached(cg.grad_vac, num_domains, granularity=granularity, shuffle=False)
    outputs = run_steps(tx, trees, jax.tree.map(lambda x: np.zeros(x.shape[1:]), trees[0]))
    expected = DATA[f"model/{case}/libmtl_grad_vac_group{group_type}"]
    for step, out in enumerate(outputs):
        got = np.concatenate([out["a"], out["b"]])
        assert_close(got, expected[step], 1e-6, f"{case} step {step}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("leaky", [False, True])
def test_grad_drop_with_the_same_uniform_draws(case, leaky):
    jacobian = DATA[f"model/{case}/jacobian"][0]
    num_domains = jacobian.shape[0]
    leak = DATA[f"model/{case}/leak"] if leaky else np.zeros(num_domains)
    out, _ = grad_drop_update(jnp.asarray(jacobian), jnp.asarray(DATA[f"model/{case}/uniform"]),
                              jnp.asarray(leak))
    expected = DATA[f"model/{case}/grad_drop_leak" if leaky else f"model/{case}/grad_drop"]
    assert_close(np.asarray(out), expected, 1e-12, case)


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("tau,k", [(0.5, 10.0), (0.2, 1000.0)])
def test_sand_mask_is_domainbed_sandmask(tree, tau, k):
    step = tree_steps(tree)[0]
    tx = cached(cg.sand_mask, tau, k)
    out = run_steps(tx, [step], None)[0]
    for name in step:
        expected = DATA[f"{tree}/sand_mask_tau{tau}_k{k}/{name[1:]}"]
        assert_close(out[name], expected, 1e-9, f"{tree} {name}")
