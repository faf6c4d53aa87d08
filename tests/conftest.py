"""Shared fixtures: random stacked gradients with a controllable amount of conflict."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # lets tests import the oracle module

if not hasattr(jax, "enable_x64"):  # JAX < 0.8 (the core's floor is 0.5.3): the same
    from jax.experimental import enable_x64  # context manager, under its older name

    jax.enable_x64 = enable_x64


def random_leaves(
    rng: np.random.Generator, num_domains: int, shapes: list[tuple[int, ...]],
    shared: float = 0.3, dtype: type = np.float64,
) -> list[np.ndarray]:
    """Per-domain gradients ``shared * common + noise``: conflicts in many pieces."""
    leaves = []
    for shape in shapes:
        common = rng.standard_normal(shape)
        noise = rng.standard_normal((num_domains, *shape))
        scale = rng.uniform(0.5, 2.0, size=(num_domains,) + (1,) * len(shape))
        leaves.append(((shared * common + noise) * scale).astype(dtype))
    return leaves


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def memory_map_count() -> int | None:
    """How many memory mappings this process holds (Linux), else None."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


def memory_map_limit() -> int | None:
    """The kernel's per-process limit on memory mappings (Linux), else None."""
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(autouse=True, scope="module")
def release_compiled_executables(request: pytest.FixtureRequest) -> Iterator[None]:
    """Frees the compiled executables when a test process holds too many at a module's end.

    XLA maps every compiled CPU executable into memory, and the tests that share one
    transformation per configuration keep its executables alive: one module alone held
    24,000 mappings. A test process (a pytest-xdist worker) lives for the whole suite, and
    past the kernel's ``vm.max_map_count`` (65,530 by default) a compile fails with a
    segmentation fault that kills the worker. So at a module's end, a process over a
    quarter of the limit clears every JAX cache (the next modules recompile what they
    use), and one still over half fails here, naming the module, instead of crashing later
    in whatever test comes next.
    """
    yield
    count, limit = memory_map_count(), memory_map_limit()
    if count is None or limit is None or count <= limit // 4:
        return
    jax.clear_caches()
    gc.collect()
    count = memory_map_count() or 0
    if count > limit // 2:
        pytest.fail(f"after {request.module.__name__}, this test process holds {count} "
                    f"memory mappings with JAX's caches cleared; expected at most half of "
                    f"vm.max_map_count ({limit}): something keeps compiled executables alive")
