"""Speed of one corgrad update on ResNet18's parameters, against the memory floor.

Setup: torchvision ResNet18's 62 parameter tensors (11.7M parameters... 11,689,512 with
the 1000-class head), D stacked float32 domain gradients, ``num_slices=10``, on the CPU.
Every figure is the median of ``--repeats`` runs after warm-up, and every ratio divides
two times measured in this one run (machines are shared and noisy: compare ratios).

* floor: NumPy reading D x P floats and writing P (``a0 + a1 + ...`` over the flat
  model): what any aggregation must at least pay;
* ERM mean: a jitted ``mean_gradients`` update on the same pytree;
* compile: the first call of the jitted update (tracing + XLA compile).

Run: ``python benchmarks/bench_corgrad.py [--domains 3 5] [--repeats 15]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import corgrad_jax as cg

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time, memory_floor, resnet18_shapes  # noqa: E402


def time_update(tx: optax.GradientTransformation, grads: dict, repeats: int
                ) -> tuple[float, float]:
    state = tx.init(None)
    update = jax.jit(tx.update)
    start = time.perf_counter()
    jax.block_until_ready(update(grads, state))
    compile_time = time.perf_counter() - start
    jax.block_until_ready(update(grads, state))
    return median_time(lambda: jax.block_until_ready(update(grads, state)), repeats), compile_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--repeats", type=int, default=15)
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
        "ERM mean": cg.mean_gradients,
    }
    rows = []
    for num_domains in args.domains:
        flat, floor_time = memory_floor(num_domains, total, args.repeats)
        grads, offset = {}, 0
        for k, shape in enumerate(shapes):
            size = int(np.prod(shape))
            grads[f"p{k:02d}"] = jnp.asarray(
                np.stack([f[offset:offset + size] for f in flat]).reshape(num_domains, *shape))
            offset += size
        for name, factory in methods.items():
            seconds, compile_time = time_update(factory(), grads, args.repeats)
            rows.append((num_domains, name, seconds, seconds / floor_time, compile_time))
        rows.append((num_domains, "floor (NumPy a0+a1+...)", floor_time, 1.0, 0.0))
    print("| D | method | time (ms) | x floor | compile (s) |")
    print("|---|---|---:|---:|---:|")
    for num_domains, name, seconds, ratio, compile_time in rows:
        compile_cell = f"{compile_time:.1f}" if compile_time else "-"
        print(f"| {num_domains} | {name} | {seconds * 1e3:.1f} | {ratio:.2f} | {compile_cell} |")


if __name__ == "__main__":
    main()
