"""Speed of the official PyTorch ``correct_grad`` on ResNet18's parameters, against the
NumPy memory floor that ``bench_corgrad.py`` prints as its one-core reference row
(``common.memory_floor``: D reads and one write into a preallocated output, on one
thread, as ``--threads 1`` runs torch), timed in interleaved rounds in one run.

Needs torch (a CPU build) and a checkout of the official repository; neither is a
dependency of this project and no official code is shipped here::

    pip install torch==2.13.0
    python benchmarks/bench_official_torch.py --official-repo PATH/TO/CorGrad
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved_medians, memory_floor, resnet18_shapes  # noqa: E402


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", required=True)
    parser.add_argument("--domains", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads; on a shared machine OpenMP's spin-waiting "
                             "threads can run 30-100x slower, so use 1 there")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location(
        "official_gradient", os.path.join(args.official_repo, "domainbed", "gradient.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_num_threads(args.threads)
    shapes = resnet18_shapes()
    total = sum(int(np.prod(s)) for s in shapes)
    print(f"official correct_grad, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| D | time (ms) | x floor | floor (ms) |\n|---|---:|---:|---:|")
    for num_domains in args.domains:
        flat, floor = memory_floor(num_domains, total)
        grads = []
        for f in flat:
            tensors, offset = [], 0
            for shape in shapes:
                size = int(np.prod(shape))
                tensors.append(torch.from_numpy(f[offset:offset + size].reshape(shape)))
                offset += size
            grads.append(tensors)

        def official(grads=grads, num_domains=num_domains) -> None:
            fresh = [[t.clone() for t in domain] for domain in grads]  # it works in place
            new_grads, _, _ = module.correct_grad(fresh, 10, 0.6)
            [sum(layer) for layer in new_grads]  # the sum set_all_grads takes

        official()
        medians = interleaved_medians({"official": official, "floor": floor}, args.repeats)
        seconds, floor_time = medians["official"], medians["floor"]
        print(f"| {num_domains} | {seconds * 1e3:.0f} | {seconds / floor_time:.1f} | "
              f"{floor_time * 1e3:.1f} |")


if __name__ == "__main__":
    main()
