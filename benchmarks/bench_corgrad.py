"""Speed of one corgrad update on ResNet18's parameters, against the memory floor.

Setup: torchvision ResNet18's 62 parameter tensors (11,689,512 parameters with the
1000-class head), D stacked float32 domain gradients, ``num_slices=10``, on the CPU.
Every figure is the median of ``--repeats`` interleaved rounds after warm-up (each round
times every method once, so the load of a shared machine weighs on all alike), and every
ratio divides two times measured in this one run.

* floor: the least time of three programs that read the D x P floats once and write P,
  what any aggregation must at least pay (``common.least_floor``):
  - the jitted sum ``g[0] + ... + g[D-1]`` of the same stacked pytree, leaf by leaf
    (``jitted_floor``), on every core XLA uses and on any backend;
  - the ERM mean: a jitted ``mean_gradients`` update of the same pytree (the sum and one
    scaling, fused), once per compilation;
  - on the CPU, NumPy's sum on one core into a preallocated, touched output
    (``common.memory_floor``);
* two-pass limit: a Gram pass and a combine pass read the D x P floats twice and write P
  once, ``(2D + 1) / (D + 1)`` floors (1.75x at D=3, 1.83x at D=5);
* compile: the first call of the jitted update (tracing + XLA compile).

Every method is timed twice, compiled by ``jax.jit`` as it is (``default``) and with
``cg.compiler_options()`` (``reassociate``: XLA may reorder float sums, so the Gram
pass can use SIMD lanes; NaN, Inf, division and functions stay exact).

Run: ``python benchmarks/bench_corgrad.py [--domains 3 5] [--repeats 15]
[--jit default reassociate]``
"""

from __future__ import annotations

import argparse
import functools
import operator
import os
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import corgrad_jax as cg

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    floor_warnings,
    interleaved_medians,
    least_floor,
    memory_floor,
    resnet18_shapes,
    two_pass_limit,
)

ERM = "ERM mean (jitted mean_gradients)"
FLOOR = "jitted sum (D reads + 1 write)"
NUMPY = "NumPy sum, one core"


def jitted_floor(grads: dict) -> Callable[[], object]:
    """A memory floor program: a jitted sum ``g[0] + g[1] + ...`` of the D stacked gradients,
    leaf by leaf (D reads and one write of every leaf, in explicit adds: ``x.sum(0)``
    over the short domain axis is slow on XLA:CPU), on the device that holds them.

    It pays what any aggregation of this pytree pays with this compiler, on every core
    XLA uses. NumPy's one-thread sum (``common.memory_floor``) alone is no floor on
    every 2-core machine: on one, one core moved 9.5 GB/s where XLA's two moved 19.7, so
    the jitted ERM mean ran at 0.49x of it (9.5 against 19.6 ms at D=3, one run). The
    benchmarks' floor is the least of both and of the ERM mean (``common.least_floor``).

    Returns:
      A callable that computes the sum once and returns it, a pytree like ``grads``
      without the domain axis."""
    num_domains = next(iter(grads.values())).shape[0]
    add = jax.jit(lambda tree: jax.tree.map(
        lambda leaf: functools.reduce(operator.add, [leaf[i] for i in range(num_domains)]),
        tree))
    jax.block_until_ready(add(grads))  # compiled, and its outputs' memory allocated once
    return lambda: jax.block_until_ready(add(grads))


def floor_programs(grads: dict, numpy_floor: Callable[[], object]
                   ) -> dict[str, Callable[[], object]]:
    """The floor's programs besides the jitted ERM mean, by row name: the jitted sum
    (:func:`jitted_floor`) and, on the CPU, NumPy's one-core sum (``numpy_floor``, from
    ``common.memory_floor``). The floor is the least of them and of the ERM means
    (``common.least_floor``)."""
    programs = {FLOOR: jitted_floor(grads)}
    if jax.default_backend() == "cpu":
        programs[NUMPY] = numpy_floor
    return programs


def stacked_resnet(flat: list[np.ndarray], shapes: list[tuple[int, ...]]) -> dict:
    """The flat per-domain vectors cut into ResNet18's leaves, ``(D, *shape)`` each."""
    grads, offset = {}, 0
    for k, shape in enumerate(shapes):
        size = int(np.prod(shape))
        grads[f"p{k:02d}"] = jnp.asarray(
            np.stack([f[offset:offset + size] for f in flat]).reshape(len(flat), *shape))
        offset += size
    return grads


JITS = ("default", "reassociate")


def compiled_update(tx: optax.GradientTransformation, grads: dict, params: dict | None = None,
                    jit: str = "default") -> tuple[Callable[[], object], float]:
    """A callable running one jitted update, and its first call's time (the compile).
    ``params`` (arrays of the parameters' shapes) size the state of stateful rules;
    ``jit="reassociate"`` compiles with :func:`corgrad_jax.compiler_options`."""
    state = tx.init(params)
    options = cg.compiler_options() if jit == "reassociate" else None
    update = jax.jit(tx.update, compiler_options=options)
    start = time.perf_counter()
    jax.block_until_ready(update(grads, state))
    compile_time = time.perf_counter() - start
    run = lambda: jax.block_until_ready(update(grads, state))
    run()
    return run, compile_time


def measure(methods: dict[str, Callable[[], optax.GradientTransformation]],
            num_domains: int, repeats: int, jits: Sequence[str] = ("default",)
            ) -> list[tuple[str, float, float, float, float]]:
    """Rows ``(name, seconds, x floor, x ERM mean, compile seconds)`` for one D, every
    method once per compilation in ``jits`` (named ``"method [jit]"`` when there are
    several); the ERM rows, then the jitted and (on the CPU) NumPy sums come last. The
    floor is the least of the ERM rows and the sums (``common.least_floor``)."""
    shapes = resnet18_shapes()
    total = sum(int(np.prod(s)) for s in shapes)
    flat, numpy_floor = memory_floor(num_domains, total)
    grads = stacked_resnet(flat, shapes)
    runs, compile_times, order = {}, {}, []
    for name, factory in {**methods, ERM: cg.mean_gradients}.items():
        for jit in jits:
            label = name if len(jits) == 1 else f"{name} [{jit}]"
            runs[label], compile_times[label] = compiled_update(factory(), grads, jit=jit)
            order.append(label)
    references = floor_programs(grads, numpy_floor)
    runs.update(references)
    medians = interleaved_medians(runs, repeats)
    erm = ERM if len(jits) == 1 else f"{ERM} [{jits[0]}]"
    floor = least_floor(medians, [name for name in order if name.startswith(ERM)]
                        + list(references))
    rows = []
    for name in [*order, *references]:
        seconds = medians[name]
        rows.append((name, seconds, seconds / floor, seconds / medians[erm],
                     compile_times.get(name, 0.0)))
    return rows


def print_table(rows_by_domains: dict[int, list[tuple[str, float, float, float, float]]]
                ) -> None:
    print("| D | method | time (ms) | x floor | x ERM mean | compile (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for num_domains, rows in rows_by_domains.items():
        for name, seconds, ratio, erm_ratio, compile_time in rows:
            compile_cell = f"{compile_time:.1f}" if compile_time else "-"
            print(f"| {num_domains} | {name} | {seconds * 1e3:.1f} | {ratio:.2f} | "
                  f"{erm_ratio:.2f} | {compile_cell} |")
    print()
    for num_domains, rows in rows_by_domains.items():
        print(f"D={num_domains}: two-pass limit (2D+1)/(D+1) = "
              f"{two_pass_limit(num_domains):.2f}x the floor")
        for line in floor_warnings({name: ratio for name, _, ratio, _, _ in rows}):
            print(f"D={num_domains}: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--jit", nargs="+", choices=JITS, default=list(JITS),
                        help="compilations to time (default: both)")
    args = parser.parse_args()
    shapes = resnet18_shapes()
    total = sum(int(np.prod(s)) for s in shapes)
    print(f"ResNet18: {len(shapes)} tensors, {total:,} parameters, float32, "
          f"{jax.devices()[0].platform}, jax {jax.__version__}\n")
    methods = {
        "corgrad (slice, paper)": lambda: cg.corgrad(10, 0.6),
        "corgrad (slice, official)": lambda: cg.corgrad(10, 0.6, variant="official"),
        "corgrad (layer)": lambda: cg.corgrad(10, None, granularity="layer"),
        "pcgrad (model)": lambda: cg.pcgrad(),
    }
    print_table({d: measure(methods, d, args.repeats, args.jit) for d in args.domains})


if __name__ == "__main__":
    main()
