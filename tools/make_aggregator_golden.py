"""Writes tests/fixtures/aggregator_golden.npz with the peers' own code.

The references are run on float64 Jacobians (D stacked domain gradients) and their
outputs stored for ``tests/test_golden_peers.py``; the tests need none of this code.

* torchjd 0.18.0 (``torchjd.aggregation``): UPGrad, DualProj, MGDA, CAGrad, IMTLG,
  AlignedMTL, ConFIG, PCGrad, GradVac, GradDrop, NashMTL;
* LibMTL (``LibMTL.weighting``, its repository's current code): CAGrad and GradVac,
  driven through a stand-in for the trainer that feeds them the gradients;
* DomainBed (``domainbed/algorithms.py``): ``SANDMask.mask_grads``, read from a checkout
  and executed on its own (DomainBed's package imports far more than torch).

CAGrad is also run with CLARABEL's tolerances tightened to 1e-12 (``*_tight``; always in
the per-piece cases): at its defaults the weights are about 1e-4 from the optimum.

Randomness is pinned: ``torch.randperm`` and ``random.shuffle`` keep the domains in
ascending order (PCGrad, GradVac: compare with ``shuffle=False``), and ``torch.rand`` is
replaced by stored uniform draws (GradDrop), which the fixture keeps.

Cases at model granularity (one Jacobian each, D = 2..6): random, rank-deficient, one
zero row, two equal rows, strongly conflicting, aligned, and 0 inside the hull.
Per-piece cases: a small pytree cut at layer, slice (4 slices) and element granularity,
with the reference applied to every piece. Stateful references (GradVac, NashMTL) see three steps.

Setup (a separate venv; none of it is a dependency of this project)::

    python3 -m venv /tmp/agg-torch
    /tmp/agg-torch/bin/pip install torch==2.13.0 "torchjd[full]==0.18.0"
    /tmp/agg-torch/bin/pip install --no-deps PATH/TO/LibMTL
    /tmp/agg-torch/bin/python tools/make_aggregator_golden.py --domainbed PATH/TO/DomainBed
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import math
import os
import random
import sys
import types
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torchjd import aggregation as jd

torch.set_default_dtype(torch.float64)
warnings.filterwarnings("ignore")

OUTPUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                      "aggregator_golden.npz")


@contextlib.contextmanager
def ascending_orders() -> Iterator[None]:
    """``torch.randperm`` and ``random.shuffle`` that keep the order."""
    randperm, shuffle = torch.randperm, random.shuffle
    torch.randperm = lambda n, *args, **kwargs: torch.arange(n)  # type: ignore[assignment]
    random.shuffle = lambda x, *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.randperm, random.shuffle = randperm, shuffle


@contextlib.contextmanager
def uniform_draws(values: np.ndarray) -> Iterator[None]:
    """``torch.rand`` that returns the given values (GradDrop's U)."""
    rand = torch.rand
    torch.rand = lambda *args, **kwargs: torch.as_tensor(values)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.rand = rand


@contextlib.contextmanager
def tight_clarabel() -> Iterator[None]:
    """cvxpy's CLARABEL solves to 1e-12 instead of its default 1e-8 gap, which leaves
    torchjd's CAGrad weights about 1e-4 from the optimum (the objective is flat there)."""
    import cvxpy

    solve = cvxpy.Problem.solve

    def tight(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if cvxpy.CLARABEL in (*args, kwargs.get("solver")):
            kwargs.update(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12,
                          tol_ktratio=1e-10, max_iter=500)
        return solve(self, *args, **kwargs)

    cvxpy.Problem.solve = tight
    try:
        yield
    finally:
        cvxpy.Problem.solve = solve


def load_libmtl() -> types.ModuleType:
    """LibMTL's ``weighting`` subpackage without its package ``__init__`` (which imports
    the whole trainer, torch_geometric included)."""
    spec = importlib.util.find_spec("LibMTL")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps LibMTL"
    root = list(spec.submodule_search_locations)[0]
    for name, path in (("LibMTL", root), ("LibMTL.weighting", os.path.join(root, "weighting"))):
        module = types.ModuleType(name)
        module.__path__ = [path]  # type: ignore[attr-defined]
        sys.modules[name] = module
    weighting = types.SimpleNamespace()
    for name in ("CAGrad", "GradVac"):
        weighting.__dict__[name] = getattr(
            importlib.import_module(f"LibMTL.weighting.{name}"), name)
    return weighting  # type: ignore[return-value]


def libmtl_runner(cls: type, num_domains: int, sizes: list[int], **kwargs: object
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """A LibMTL weighting driven by a stand-in trainer: each call feeds it the stacked
    flat gradients ``(D, P)`` of ``sizes`` parameters and returns the gradient it sets."""

    class Driven(cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.task_num, self.device, self.rep_grad = num_domains, torch.device("cpu"), False
            self.gradients: torch.Tensor | None = None
            self.result: torch.Tensor | None = None

        def get_share_params(self) -> list[torch.Tensor]:
            return [torch.zeros(size) for size in sizes]

        def _compute_grad(self, losses, mode, rep_grad=False):  # type: ignore[no-untyped-def]
            return self.gradients.clone()

        def _reset_grad(self, new_grads: torch.Tensor) -> None:
            self.result = new_grads

    weighting = Driven()
    if hasattr(weighting, "init_param"):
        weighting.init_param()

    def run(gradients: np.ndarray) -> np.ndarray:
        weighting.gradients = torch.as_tensor(gradients)
        with ascending_orders():
            weighting.backward([torch.zeros(())] * num_domains, **kwargs)
        return weighting.result.numpy()

    return run


def load_sand_mask(domainbed: str) -> Callable[[list[np.ndarray], float, float], list[np.ndarray]]:
    """DomainBed's ``SANDMask.mask_grads``, compiled on its own from the checkout."""
    path = os.path.join(domainbed, "domainbed", "algorithms.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    sand = next(node for node in tree.body
                if isinstance(node, ast.ClassDef) and node.name == "SANDMask")
    method = next(node for node in sand.body
                  if isinstance(node, ast.FunctionDef) and node.name == "mask_grads")
    namespace: dict = {"torch": torch}
    exec(compile(ast.Module(body=[method], type_ignores=[]), path, "exec"), namespace)
    mask_grads = namespace["mask_grads"]

    def run(leaves: list[np.ndarray], tau: float, k: float) -> list[np.ndarray]:
        params = [torch.nn.Parameter(torch.zeros(leaf.shape[1:])) for leaf in leaves]
        owner = types.SimpleNamespace(tau=tau, k=k)
        gradients = [[torch.as_tensor(leaf[d]) for leaf in leaves]
                     for d in range(leaves[0].shape[0])]
        per_param = [list(group) for group in zip(*gradients, strict=True)]
        mask_grads(owner, per_param, params)
        return [p.grad.numpy() for p in params]

    return run


STATELESS: dict[str, Callable[[int], Callable[[torch.Tensor], torch.Tensor]]] = {
    "upgrad": lambda d: jd.UPGrad(),
    "dual_proj": lambda d: jd.DualProj(),
    "mgda": lambda d: jd.MGDA(),
    "cagrad_c0.5": lambda d: jd.CAGrad(c=0.5),
    "cagrad_c2": lambda d: jd.CAGrad(c=2.0),
    "imtl_g": lambda d: jd.IMTLG(),
    "aligned_mtl_min": lambda d: jd.AlignedMTL(),
    "aligned_mtl_median": lambda d: jd.AlignedMTL(scale_mode="median"),
    "aligned_mtl_rmse": lambda d: jd.AlignedMTL(scale_mode="rmse"),
    "con_fig": lambda d: jd.ConFIG(),
    "pcgrad": lambda d: jd.PCGrad(),
}
STATEFUL: dict[str, Callable[[int], Callable[[torch.Tensor], torch.Tensor]]] = {
    "grad_vac": lambda d: jd.GradVac(beta=0.5),
    "nash_mtl": lambda d: jd.NashMTL(n_tasks=d),
    "nash_mtl_no_clip": lambda d: jd.NashMTL(n_tasks=d, max_norm=0.0),
}


def jacobians(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The model-granularity cases: name -> ``(steps, D, n)`` (3 steps each)."""
    cases: dict[str, np.ndarray] = {}
    for num_domains in range(2, 7):
        cases[f"random_d{num_domains}"] = rng.standard_normal((3, num_domains, 9))
    low = rng.standard_normal((3, 4, 2)) @ rng.standard_normal((3, 2, 9))
    cases["rank2_d4"] = low
    zero = rng.standard_normal((3, 3, 9))
    zero[:, 1] = 0
    cases["zero_row_d3"] = zero
    equal = rng.standard_normal((3, 4, 9))
    equal[:, 2] = equal[:, 0]
    cases["equal_rows_d4"] = equal
    base = rng.standard_normal((3, 1, 9))
    conflicting = np.concatenate([base, -0.8 * base + 0.3 * rng.standard_normal((3, 1, 9)),
                                  rng.standard_normal((3, 1, 9))], axis=1)
    cases["conflicting_d3"] = conflicting
    aligned = np.abs(rng.standard_normal((3, 1, 9))) + 0.2 * np.abs(
        rng.standard_normal((3, 5, 9)))
    cases["aligned_d5"] = aligned
    # 0 inside the hull: three gradients in a plane around the origin (CAGrad with
    # c >= 1 then has its optimum at g_w = 0, and torchjd returns 0).
    plane = np.linalg.qr(rng.standard_normal((9, 2)))[0].T  # (2, 9) orthonormal
    triangle = np.array([[1.0, 0.1], [-0.6, 0.9], [-0.5, -1.1]])
    cases["zero_inside_d3"] = np.stack([(1 + 0.1 * s) * triangle @ plane for s in range(3)])
    return cases


def pieces(shape: tuple[int, ...], granularity: str, num_slices: int) -> list[tuple[int, int]]:
    """The library's paper slicing of a flattened leaf (docs/algorithm.md, Sec. 2)."""
    size = math.prod(shape)
    if granularity == "layer":
        return [(0, size)]
    if granularity == "element":
        return [(p, p + 1) for p in range(size)]
    slices = min(num_slices, size)
    length = -(-size // slices)
    return [(s, min(s + length, size)) for s in range(0, size, length)]


TREES = {
    # name: (D, leaf shapes, granularities, leaf scales)
    "tree_d3": (3, [(6, 4, 3), (7,), (13, 5), (2, 3)], ("layer", "slice"), [1, 1, 1, 1]),
    "tree_d4": (4, [(5, 8), (9,), (3, 3, 2)], ("layer", "slice"), [1, 1, 1]),
    "elements_d3": (3, [(6,), (2, 3)], ("element",), [1, 1e-3]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domainbed", required=True, help="a checkout of DomainBed")
    args = parser.parse_args()
    libmtl = load_libmtl()
    sand_mask = load_sand_mask(args.domainbed)
    rng = np.random.default_rng(2024)
    out: dict[str, np.ndarray] = {}

    for case, steps in jacobians(rng).items():
        num_domains, size = steps.shape[1:]
        out[f"model/{case}/jacobian"] = steps
        matrix = torch.as_tensor(steps[0])
        with ascending_orders():
            for name, make in STATELESS.items():
                out[f"model/{case}/{name}"] = make(num_domains)(matrix).numpy()
            with tight_clarabel():
                for name in ("cagrad_c0.5", "cagrad_c2"):
                    out[f"model/{case}/{name}_tight"] = STATELESS[name](num_domains)(
                        matrix).numpy()
            for name, make in STATEFUL.items():
                aggregator = make(num_domains)
                out[f"model/{case}/{name}"] = np.stack(
                    [aggregator(torch.as_tensor(step)).numpy() for step in steps])
        uniform = rng.uniform(size=size)
        out[f"model/{case}/uniform"] = uniform
        with uniform_draws(uniform):
            out[f"model/{case}/grad_drop"] = jd.GradDrop()(matrix).numpy()
            leak = torch.linspace(0.1, 0.5, num_domains)
            out[f"model/{case}/grad_drop_leak"] = jd.GradDrop(leak=leak)(matrix).numpy()
        out[f"model/{case}/leak"] = np.linspace(0.1, 0.5, num_domains)
        # LibMTL, on the whole model (GradVac group type 0) and per parameter (type 2)
        for c, rescale in ((0.5, 0), (0.5, 1), (0.4, 2)):
            cagrad = libmtl_runner(libmtl.CAGrad, num_domains, [size], calpha=c, rescale=rescale)
            out[f"model/{case}/libmtl_cagrad_c{c}_rescale{rescale}"] = cagrad(steps[0])
        for group_type in (0, 2):
            sizes = [4, size - 4]
            gradvac = libmtl_runner(libmtl.GradVac, num_domains, sizes, GradVac_beta=0.5,
                                    GradVac_group_type=group_type)
            out[f"model/{case}/libmtl_grad_vac_group{group_type}"] = np.stack(
                [gradvac(step) for step in steps])

    for tree, (num_domains, shapes, granularities, scales) in TREES.items():
        steps = [[scale * rng.standard_normal((num_domains, *shape))
                  for shape, scale in zip(shapes, scales, strict=True)] for _ in range(3)]
        for step, leaves in enumerate(steps):
            for k, leaf in enumerate(leaves):
                out[f"{tree}/in{step}/{k}"] = leaf
        out[f"{tree}/num_leaves"] = np.array(len(shapes))
        for granularity in granularities:
            for name, make in {**STATELESS, **STATEFUL}.items():
                stateful = name in STATEFUL
                aggregators: dict[tuple[int, int], Callable] = {}
                for step, leaves in enumerate(steps if stateful else steps[:1]):
                    for k, leaf in enumerate(leaves):
                        flat = leaf.reshape(num_domains, -1)
                        result = np.zeros(flat.shape[1])
                        for start, stop in pieces(leaf.shape[1:], granularity, 4):
                            aggregator = aggregators.setdefault((k, start), make(num_domains))
                            with ascending_orders(), tight_clarabel():
                                result[start:stop] = aggregator(
                                    torch.as_tensor(flat[:, start:stop])).numpy()
                        out[f"{tree}/{granularity}/{name}/out{step}/{k}"] = result.reshape(
                            leaf.shape[1:])
        for tau, k in ((0.5, 10.0), (0.2, 1000.0)):
            masked = sand_mask(steps[0], tau, k)
            for leaf_index, leaf in enumerate(masked):
                out[f"{tree}/sand_mask_tau{tau}_k{k}/{leaf_index}"] = leaf
    np.savez_compressed(OUTPUT, **out)
    print(f"wrote {len(out)} arrays to {os.path.normpath(OUTPUT)}")


if __name__ == "__main__":
    main()
