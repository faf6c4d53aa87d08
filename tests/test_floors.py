"""The constraints files CI installs the floors from match pyproject.toml's floors
(tools/floors.py), and so do the JAX versions the packages check at import."""

from __future__ import annotations

import ast
import importlib.util
import os
import tomllib

import pytest

from corgrad_jax._src import _version_check

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_tool():
    path = os.path.join(ROOT, "tools", "floors.py")
    spec = importlib.util.spec_from_file_location("floors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


floors = load_tool()


def read_pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        return tomllib.load(file)


def test_the_committed_constraints_files_are_what_pyproject_makes():
    for path, text in floors.expected_files().items():
        with open(path, encoding="utf-8") as file:
            assert file.read() == text, f"{path} is stale: run python tools/floors.py"
    assert floors.main(["--check"]) == 0


def test_core_and_full_floors_pin_every_requirement_at_its_highest_floor():
    pyproject = {
        "build-system": {"requires": ["setuptools>=77.0.1"]},
        "project": {
            "name": "corgrad-jax",
            "dependencies": ["jax>=0.5.3", "numpy>=1.25.0"],
            "optional-dependencies": {
                "experiments": ["jax>=0.7.2", "Orbax_Checkpoint>=0.11.17", "numpy>=2.0.0"],
                "test": ["corgrad-jax[experiments]", "pytest>=8.0.0"],
                "dev": ["corgrad-jax[test]", "ruff>=0.6.0"],
            },
        },
    }
    core, full = floors.project_floors(pyproject)
    assert core == {"setuptools": "77.0.1", "jax": "0.5.3", "numpy": "1.25.0",
                    "pytest": "8.0.0"}
    assert full == {"setuptools": "77.0.1", "jax": "0.7.2", "numpy": "2.0.0",
                    "pytest": "8.0.0", "orbax-checkpoint": "0.11.17", "ruff": "0.6.0"}
    assert floors.release("0.10.0") > floors.release("0.9.2")  # numbers, not strings


@pytest.mark.parametrize(
    "requirement", ["jax", "jax<0.9", "jax==0.7.2", "jax>=0.5; python_version<'3.12'"]
)
def test_a_requirement_without_a_plain_floor_is_refused(requirement):
    with pytest.raises(ValueError, match="does not declare a floor"):
        floors.parse_floor(requirement)


def test_every_requirement_of_pyproject_declares_a_floor():
    pyproject = read_pyproject()
    core, full = floors.project_floors(pyproject)  # raises on a requirement with no floor
    assert {"jax", "jaxlib", "optax", "chex", "numpy", "setuptools", "pytest"} <= set(core)
    assert {"flax", "orbax-checkpoint", "grain", "tensorflow-datasets"} <= set(full)
    assert all(full[name] == floor or floors.release(full[name]) > floors.release(floor)
               for name, floor in core.items())


def experiments_minimum_jax() -> str:
    """experiments.training.MINIMUM_JAX, read without importing the trainer (its JAX may be
    older)."""
    with open(os.path.join(ROOT, "experiments", "training", "__init__.py"),
              encoding="utf-8") as file:
        tree = ast.parse(file.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "MINIMUM_JAX":
            return ast.literal_eval(node.value)
    raise AssertionError("experiments/training/__init__.py defines no MINIMUM_JAX")


def test_the_import_checks_use_the_declared_jax_floors():
    core, full = floors.project_floors(read_pyproject())
    assert _version_check.MINIMUM_JAX == core["jax"] == core["jaxlib"]
    assert experiments_minimum_jax() == full["jax"] == full["jaxlib"]
