"""Helpers shared by the benchmarks (no JAX import: the torch benchmark uses them too)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def resnet18_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
    """torchvision ResNet18's parameter shapes (PyTorch layout), in module order."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for stage, channels in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride_block = block == 0 and stage > 0
            shapes += [(channels, in_channels, 3, 3), (channels,), (channels,),
                       (channels, channels, 3, 3), (channels,), (channels,)]
            if stride_block:
                shapes += [(channels, in_channels, 1, 1), (channels,), (channels,)]
            in_channels = channels
    shapes += [(num_classes, 512), (num_classes,)]
    return shapes


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def memory_floor(num_domains: int, size: int, repeats: int) -> tuple[list[np.ndarray], float]:
    """D random flat float32 gradients, and the median time of NumPy reading them and
    writing their sum (``a0 + a1 + ...``): what any aggregation must at least pay."""
    rng = np.random.default_rng(0)
    flat = [rng.standard_normal(size, dtype=np.float32) for _ in range(num_domains)]

    def floor() -> None:
        out = flat[0] + flat[1]
        for extra in flat[2:]:
            out += extra

    return flat, median_time(floor, repeats)
