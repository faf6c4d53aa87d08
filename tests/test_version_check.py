"""On a JAX below the floor, importing corgrad_jax (or the trainer) raises ImportError
naming both versions, instead of an AttributeError deep inside."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from corgrad_jax._src import _version_check

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.parametrize("installed", ["0.4.30", "0.5.2", "0.5.2.dev20250301+cuda12"])
def test_require_jax_names_the_installed_and_the_needed_version(monkeypatch, installed):
    monkeypatch.setattr(_version_check, "installed_jax_version", lambda: installed)
    with pytest.raises(ImportError) as error:
        _version_check.require_jax("corgrad_jax", "0.5.3", "jax.sharding.get_abstract_mesh")
    message = str(error.value)
    assert f"jax {installed} is installed" in message
    assert "corgrad_jax needs jax>=0.5.3 (jax.sharding.get_abstract_mesh)" in message


@pytest.mark.parametrize("installed", ["0.5.3", "0.5.3.dev20250301", "0.6.0", "0.10.0"])
def test_require_jax_accepts_the_floor_and_later_releases(monkeypatch, installed):
    monkeypatch.setattr(_version_check, "installed_jax_version", lambda: installed)
    _version_check.require_jax("corgrad_jax", "0.5.3", "jax.sharding.get_abstract_mesh")


def test_releases_order_as_numbers_not_as_strings():
    assert _version_check.release("0.10.0") > _version_check.release("0.9.2")
    assert _version_check.release("0.9.0.1") > _version_check.release("0.9.0")
    assert _version_check.release("0.7.2") > _version_check.release("0.7.1.dev20250601")


IMPORT_ON_OLD_JAX = textwrap.dedent(
    """
    import jax
    jax.__version__ = {version!r}  # what an older install reports
    try:
        import {module}
    except ImportError as error:
        print("IMPORT-ERROR:", error)
    else:
        print("IMPORTED")
    """
)


@pytest.mark.parametrize(
    ("module", "version", "expected"),
    [
        ("corgrad_jax", "0.5.2", "IMPORT-ERROR: corgrad_jax needs jax>=0.5.3"),
        ("experiments.train", "0.7.2", "IMPORT-ERROR: experiments needs jax>=0.8.0"),
        ("corgrad_jax", _version_check.MINIMUM_JAX, "IMPORTED"),
    ],
)
def test_importing_on_an_older_jax_fails_first_with_the_versions(module, version, expected):
    script = IMPORT_ON_OLD_JAX.format(version=version, module=module)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(expected), result.stdout
    if expected != "IMPORTED":
        assert f"but jax {version} is installed" in result.stdout
