"""Speed of every rule at every granularity on ResNet18's parameters, against the floor.

Setup as ``bench_corgrad.py``: torchvision ResNet18's 62 tensors (11,689,512 parameters),
D stacked float32 domain gradients, ``num_slices=10``, on the CPU; every figure is the
median of ``--repeats`` interleaved rounds after warm-up, every ratio divides two times
of this one run, against

* the memory floor: the least time of three programs that read the D x P floats once
  and write P (``common.least_floor``): the jitted sum of the D stacked gradients, leaf
  by leaf, on every core and any backend (``bench_corgrad.floor_programs``), the jitted
  ``mean_gradients`` of the same pytree (ERM's mean), and on the CPU NumPy's one-thread
  sum (``common.memory_floor``);
* the ERM mean of the same compilation;
* the two-pass limit of the Gram rules: two reads and one write, (2D + 1) / (D + 1)
  floors (1.75x at D=3, 1.83x at D=5).

The Gram rules (projection, dual-cone, min-norm and spectral rules) share one engine,
so the table mostly measures it: the Gram pass, the rule on ``(pieces, D, D)`` arrays,
the combine pass. ``compile`` is the first call of the jitted update. ``jit`` says how it
was compiled: by ``jax.jit`` as it is (``default``), or with ``cg.compiler_options()``
(``reassociate``: XLA may reorder float sums; NaN, Inf, division and functions stay
exact).

Run: ``python benchmarks/bench_aggregators.py [--domains 3 5] [--granularities layer
slice element] [--rules upgrad mgda ...] [--repeats 11] [--jit default reassociate] [--layout torch
flax]``
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax

import corgrad_jax as cg

sys.path.insert(0, os.path.dirname(__file__))
from bench_corgrad import JITS, compiled_update, floor_programs, stacked_resnet  # noqa: E402
from common import (  # noqa: E402
    LAYOUTS,
    floor_warnings,
    interleaved_medians,
    least_floor,
    memory_floor,
    resnet18_shapes,
    two_pass_limit,
)

GramFactory = Callable[[int, str], optax.GradientTransformation]
GRAM_RULES: dict[str, GramFactory] = {
    "corgrad": lambda d, g: cg.corgrad(10, 0.6, granularity=g),
    "pcgrad (corgrad, alpha=None)": lambda d, g: cg.corgrad(10, None, granularity=g),
    "upgrad": lambda d, g: cg.upgrad(granularity=g),
    "dual_proj": lambda d, g: cg.dual_proj(granularity=g),
    "mgda": lambda d, g: cg.mgda(granularity=g),
    "mgda (exact)": lambda d, g: cg.mgda(granularity=g, solver="exact"),
    "cagrad": lambda d, g: cg.cagrad(0.5, granularity=g),
    "imtl_g": lambda d, g: cg.imtl_g(granularity=g),
    "aligned_mtl": lambda d, g: cg.aligned_mtl(granularity=g),
    "con_fig": lambda d, g: cg.con_fig(granularity=g),
    "grad_vac": lambda d, g: cg.grad_vac(d, granularity=g),
    "nash_mtl": lambda d, g: cg.nash_mtl(d, granularity=g),
}
ELEMENTWISE: dict[str, Callable[[], optax.GradientTransformation]] = {
    "agreement_sum": cg.agreement_sum,
    "agreement_rand": cg.agreement_rand,
    "and_mask": cg.and_mask,
    "sand_mask": cg.sand_mask,
    "grad_drop": cg.grad_drop,
}
ERM = "ERM mean"
# Stateful rules whose element granularity keeps D^2 floats per parameter, or solves
# one Newton system per parameter: not run there unless asked by name.
SLOW_AT_ELEMENT = ("grad_vac", "nash_mtl", "mgda (exact)")

Row = tuple[str, str, str, int, float, float, float, float]


def measure(rules: dict[str, GramFactory], granularities: list[str], elementwise: list[str],
            num_domains: int, repeats: int, named: set[str], jits: Sequence[str] = ("default",),
            layout: str = "torch") -> list[Row]:
    """``(rule, granularity, jit, D, seconds, x floor, x ERM, compile seconds)`` rows: every
    update (the ERM mean's too) once per compilation in ``jits``, all timed in the same
    interleaved rounds; ``x floor`` divides by ``common.least_floor`` of the ERM means and
    the sums, ``x ERM`` by the ERM mean of the same compilation.
    ``layout``: the leaves' shapes as PyTorch or Flax lays them out."""
    shapes = resnet18_shapes(layout=layout)
    total = sum(int(np.prod(s)) for s in shapes)
    flat, numpy_floor = memory_floor(num_domains, total)
    grads = stacked_resnet(flat, shapes)
    params = {name: np.zeros(leaf.shape[1:], np.float32) for name, leaf in grads.items()}
    factories: dict[tuple[str, str], Callable[[], optax.GradientTransformation]] = {}
    for name, factory in rules.items():
        for granularity in granularities:
            if granularity == "element" and name in SLOW_AT_ELEMENT and name not in named:
                continue
            factories[(name, granularity)] = (
                lambda factory=factory, granularity=granularity: factory(num_domains, granularity))
    for name in elementwise:
        factories[(name, "element")] = ELEMENTWISE[name]
    factories[(ERM, "-")] = cg.mean_gradients
    runs: dict[tuple[str, str, str], Callable[[], object]] = {}
    compile_times: dict[tuple[str, str, str], float] = {}
    for (name, granularity), factory in factories.items():
        for jit in jits:
            key = (name, granularity, jit)
            runs[key], compile_times[key] = compiled_update(factory(), grads, params, jit)
    programs = floor_programs(grads, numpy_floor)
    runs.update({(name, "-", "-"): program for name, program in programs.items()})
    medians = interleaved_medians(runs, repeats)
    floor_time = least_floor(medians, [key for key in runs if key[0] in (ERM, *programs)])
    return [(name, granularity, jit, num_domains, seconds, seconds / floor_time,
             seconds / medians[(ERM, "-", jit if jit != "-" else jits[0])],
             compile_times.get((name, granularity, jit), 0.0))
            for (name, granularity, jit), seconds in medians.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--granularities", nargs="+", default=["layer", "slice", "element"])
    parser.add_argument("--rules", nargs="+", default=None,
                        help="names of GRAM_RULES and ELEMENTWISE rules (default: all)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--jit", nargs="+", choices=JITS, default=list(JITS),
                        help="compilations to time, in the same interleaved rounds "
                             "(default: both)")
    parser.add_argument("--layout", choices=LAYOUTS, default="torch",
                        help="the leaves' shapes: PyTorch's (O, I, kh, kw) or Flax's "
                             "(kh, kw, I, O) (default: torch)")
    args = parser.parse_args()
    named = set(args.rules or [])
    rules = {k: v for k, v in GRAM_RULES.items() if not named or k in named}
    elementwise = [k for k in ELEMENTWISE if not named or k in named]
    flags = os.environ.get("XLA_FLAGS", "")
    print(f"ResNet18 ({args.layout} layout), float32, {jax.devices()[0].platform}, "
          f"jax {jax.__version__}, XLA_FLAGS={flags!r}\n")
    rows: list[Row] = []
    for num_domains in args.domains:
        rows += measure(rules, args.granularities, elementwise, num_domains, args.repeats,
                        named, args.jit, args.layout)
    print("| rule | granularity | jit | D | time (ms) | x floor | x ERM mean | compile (s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, granularity, jit, num_domains, seconds, ratio, erm_ratio, compile_time in rows:
        compile_cell = f"{compile_time:.1f}" if compile_time else "-"
        print(f"| {name} | {granularity} | {jit} | {num_domains} | {seconds * 1e3:.1f} | "
              f"{ratio:.2f} | {erm_ratio:.2f} | {compile_cell} |")
    print()
    for num_domains in args.domains:
        print(f"D={num_domains}: two-pass limit {two_pass_limit(num_domains):.2f}x the floor")
        ratios = {f"{n} ({g}, {j})": r for n, g, j, d, _, r, _, _ in rows if d == num_domains}
        for line in floor_warnings(ratios):
            print(f"D={num_domains}: {line}")


if __name__ == "__main__":
    main()
