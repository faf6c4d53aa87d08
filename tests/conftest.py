"""Shared fixtures: random stacked gradients with a controllable amount of conflict."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # lets tests import the oracle module

if not hasattr(jax, "enable_x64"):  # JAX < 0.8 (the core's floor is 0.5.3): the same
    from jax.experimental import enable_x64  # context manager, under its older name

    jax.enable_x64 = enable_x64

# A persistent compilation cache of this test process's own, emptied when it exits: many
# tests build a fresh transformation (a new function to jit) whose program is the same
# HLO as an earlier test's, and XLA then compiles it once (the rules' and properties'
# tests ran 28% faster). The key holds the program and its compile options, so a program
# compiled with ``compiler_options()`` is never served for the default compilation. Each
# pytest-xdist worker has its own folder; the subprocesses the tests start use none.
_COMPILE_CACHE = tempfile.mkdtemp(prefix="corgrad-jax-test-compile-cache-")
atexit.register(shutil.rmtree, _COMPILE_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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
