"""The docstring examples of the library's public API run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["corgrad_jax._src.corgrad", "corgrad_jax._src.projection", "corgrad_jax._src.agreement",
           "corgrad_jax._src.dual_cone", "corgrad_jax._src.min_norm",
           "corgrad_jax._src.balancing", "corgrad_jax._src.grad_vac",
           "corgrad_jax._src.nash_mtl", "corgrad_jax._src.rules",
           "corgrad_jax._src.per_domain", "corgrad_jax._src.sharding",
           "corgrad_jax._src.compiling", "corgrad_jax._src.draws"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
