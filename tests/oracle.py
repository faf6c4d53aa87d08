"""An independent float64 NumPy oracle of CorGrad, written as the direct loops of the
paper's Algorithm 1 and of the official ``correct_grad`` (no Gram matrices, no
coefficients): the judge of the library's numerics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def slice_bounds(shape: Sequence[int], granularity: str, n: int, variant: str) -> list[tuple]:
    """Start/stop of every piece of a flattened leaf of parameter shape ``shape``."""
    size = math.prod(shape)
    if granularity in ("layer", "model"):
        return [(0, size)]
    if granularity == "element":
        return [(p, p + 1) for p in range(size)]
    if variant == "official" and len(shape) > 0:
        rows = shape[0]
        chunk = -(-rows // n)  # torch.chunk
        row_size = size // rows
        return [(r * row_size, min(r + chunk, rows) * row_size) for r in range(0, rows, chunk)]
    slices = min(n, size)
    length = -(-size // slices)
    return [(s, min(s + length, size)) for s in range(0, size, length)]


def project(grads: list[np.ndarray], orders: list[list[int]], sequential: bool, stats: dict,
            conflict_eps: float = 1e-12, zero_rtol: float = 1e-7):
    """PCGrad-style projection of D flat vectors (one piece)."""
    current = [g.copy() for g in grads]
    for i in range(len(grads)):
        for j in orders[i]:
            ref = current[j] if sequential else grads[j]
            inner = float(current[i] @ ref)
            stats["tests"] += 1
            scale = np.sqrt(float(grads[i] @ grads[i]) * float(grads[j] @ grads[j]))
            nonzero = np.linalg.norm(ref) > zero_rtol * np.linalg.norm(grads[j])
            if inner < -conflict_eps * scale and float(ref @ ref) > 0 and nonzero:
                before = np.linalg.norm(current[i])
                removed = inner / float(ref @ ref) * ref
                current[i] = current[i] - removed
                stats["conflicts"] += 1
                stats["ratios"].append(np.linalg.norm(removed) / before)
    return current


def corgrad_oracle(
    leaves: Sequence[np.ndarray],
    *,
    num_slices: int = 10,
    alpha: float | None = 0.6,
    granularity: str = "slice",
    variant: str = "paper",
    orders: list[list[int]] | None = None,
    reduction: str = "sum",
    tie_rtol: float = 1e-7,
):
    """Returns (outputs, diagnostics dict)."""
    leaves = [np.asarray(x, np.float64) for x in leaves]
    num_domains = leaves[0].shape[0]
    if orders is None:
        orders = [[j for j in range(num_domains) if j != i] for i in range(num_domains)]
    sequential = variant == "official"
    stats = {"tests": 0, "conflicts": 0, "ratios": []}
    flats = [x.reshape(num_domains, -1) for x in leaves]
    if granularity == "model":
        whole = np.concatenate(flats, axis=1)
        projected = project(list(whole), orders, sequential, stats)
        sizes = np.cumsum([0] + [f.shape[1] for f in flats])
        per_leaf = [[p[sizes[k]:sizes[k + 1]] for p in projected] for k in range(len(flats))]
    else:
        per_leaf = []
        for x, flat in zip(leaves, flats, strict=True):
            out = [np.zeros(flat.shape[1]) for _ in range(num_domains)]
            for start, stop in slice_bounds(x.shape[1:], granularity, num_slices, variant):
                pieces = project([flat[d, start:stop] for d in range(num_domains)], orders,
                                 sequential, stats)
                for d in range(num_domains):
                    out[d][start:stop] = pieces[d]
            per_leaf.append(out)
    outputs, dominant = [], 0
    for x, grads in zip(leaves, per_leaf, strict=True):
        grads = list(grads)
        if alpha is not None:
            norms = np.array([np.linalg.norm(g) for g in grads])
            mu, sigma = norms.mean(), norms.std()
            original = np.mean([np.linalg.norm(g) for g in x.reshape(num_domains, -1)])
            slack = tie_rtol * original
            if variant == "official":
                outliers = [i for i in range(num_domains)
                            if abs(norms[i] - mu) > sigma + slack]
                keep = [grads[i] for i in range(num_domains) if i not in outliers]
                mean = np.mean(keep, axis=0)
            else:
                outliers = [i for i in range(num_domains) if norms[i] - mu > sigma + slack]
                mean = np.mean(grads, axis=0)
            for i in outliers:
                grads[i] = alpha * grads[i] + (1 - alpha) * mean
            dominant += len(outliers)
        total = np.sum(grads, axis=0)
        if reduction == "mean":
            total = total / num_domains
        outputs.append(total.reshape(x.shape[1:]))
    diagnostics = {
        "modification_frequency": stats["conflicts"] / stats["tests"],
        "modification_ratio": float(np.mean(stats["ratios"])) if stats["ratios"] else 0.0,
        "dominant_fraction": dominant / (num_domains * len(leaves)),
    }
    return outputs, diagnostics
