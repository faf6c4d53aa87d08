"""Writes tests/fixtures/official_correct_grad.npz from the official CorGrad code.

The official implementation (``correct_grad`` in ``domainbed/gradient.py`` of the
authors' repository, a DomainBed fork) is run on random float64 tensors in PyTorch layout,
and its inputs and outputs are stored for ``tests/test_official_golden.py``. Neither the
official code nor torch is needed by the tests; this script needs both:

    pip install torch==2.13.0 numpy
    python tools/make_official_golden.py --official-repo PATH/TO/CorGrad

Shapes keep every chunk at least D elements long: in a piece shorter than that, an
emptied piece leaves a rounding residue whose sign the official loop treats as a real
direction (see ``project_conflicts``), a case this library deliberately handles
differently.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np

CASES = {
    # name: (num_domains, num_slices, alpha, parameter shapes in PyTorch layout, seed)
    "d3_resnet_like": (
        3, 10, 0.6, [(16, 3, 3, 3), (32,), (32,), (32, 16, 3, 3), (5, 32), (5, 3)], 0),
    "d4_small_rows": (4, 10, 0.6, [(6, 8, 3, 3), (24, 7), (40,)], 1),
    "d5_alpha_03": (5, 4, 0.3, [(12, 6, 3, 3), (20,), (9, 12)], 2),
    "d3_one_slice": (3, 1, 0.6, [(8, 4, 3, 3), (8,)], 3),
}


def load_official(repo: str):  # type: ignore[no-untyped-def]
    path = os.path.join(repo, "domainbed", "gradient.py")
    spec = importlib.util.spec_from_file_location("official_gradient", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.correct_grad


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--official-repo", required=True)
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "official_correct_grad.npz"))
    args = parser.parse_args()
    correct_grad = load_official(args.official_repo)
    arrays: dict[str, np.ndarray] = {}
    for name, (num_domains, num_slices, alpha, shapes, seed) in CASES.items():
        rng = np.random.default_rng(seed)
        stacked = []
        for shape in shapes:
            common = rng.standard_normal(shape)
            scale = rng.uniform(0.5, 3.0, size=(num_domains,) + (1,) * len(shape))
            stacked.append((0.3 * common + rng.standard_normal((num_domains, *shape))) * scale)
        domain_grads = [[torch.tensor(x[d].copy()) for x in stacked] for d in range(num_domains)]
        new_grads, change_rate, change_percentage = correct_grad(domain_grads, num_slices, alpha)
        arrays[f"{name}/num_leaves"] = np.array(len(shapes))
        arrays[f"{name}/num_slices"] = np.array(num_slices)
        arrays[f"{name}/alpha"] = np.array(alpha)
        arrays[f"{name}/change_rate"] = np.array(change_rate)
        arrays[f"{name}/change_percentage"] = np.array(change_percentage)
        for k, x in enumerate(stacked):
            arrays[f"{name}/in{k}"] = x
            arrays[f"{name}/out{k}"] = sum(new_grads[k]).numpy()  # as set_all_grads does
        print(f"{name}: change_rate={change_rate:.4f} change_percentage={change_percentage:.4f}")
    np.savez_compressed(args.out, **arrays)
    print("wrote", os.path.relpath(args.out))


if __name__ == "__main__":
    main()
