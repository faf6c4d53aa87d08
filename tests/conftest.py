"""Shared fixtures: random stacked gradients with a controllable amount of conflict."""

from __future__ import annotations

import os
import sys

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
