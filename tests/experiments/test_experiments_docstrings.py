"""The docstring examples of the trainer's modules run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["experiments.cli", "experiments.hparams", "experiments.registry",
           "experiments.hparams_registry", "experiments.data", "experiments.data.splits",
           "experiments.data.sampling", "experiments.data.device_images",
           "experiments.data.device_colour",
           "experiments.models", "experiments.seeding", "experiments.sweep",
           "experiments.training.parallel", "experiments.training.processes"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
