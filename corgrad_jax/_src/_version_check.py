"""The oldest JAX that corgrad_jax runs on, checked when the package is imported.

Importing this module raises ImportError on a JAX older than :data:`MINIMUM_JAX`, so a
user whose JAX is pinned (by an accelerator image, say) reads which version is needed
instead of an AttributeError from deep inside a transformation. The floor is the one
declared in ``pyproject.toml`` (a test keeps them equal): JAX 0.5.3 added
``jax.sharding.get_abstract_mesh``, which :func:`corgrad_jax.partitioned` reads.
"""

from __future__ import annotations

import re

import jax

MINIMUM_JAX = "0.5.3"
"""The oldest JAX release corgrad_jax runs on (``jax.sharding.get_abstract_mesh``)."""


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string, for ordering.

    Args:
      version: a version as JAX spells it, e.g. ``"0.10.2"``, ``"0.9.0.1"`` or
        ``"0.7.3.dev20250801+cuda"``.

    Returns:
      Its leading numeric components, e.g. ``(0, 7, 3)``; tuples order releases as
      numbers (``(0, 10, 0) > (0, 9, 2)``), unlike the strings.

    Example:
      >>> from corgrad_jax._src._version_check import release
      >>> release("0.10.0") > release("0.9.2")
      True
      >>> release("0.7.3.dev20250801+cuda")
      (0, 7, 3)
    """
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group().split("."))


def installed_jax_version() -> str:
    """The version of the JAX that this process imported."""
    return jax.__version__


def require_jax(package: str, minimum: str, needed_for: str) -> None:
    """Raises ImportError when the installed JAX is older than ``minimum``.

    Args:
      package: the package that needs it, named in the message.
      minimum: the oldest JAX release it runs on, as in ``pyproject.toml``.
      needed_for: the JAX API that sets the floor, named in the message.

    Raises:
      ImportError: naming the installed and the required versions.

    Example:
      >>> from corgrad_jax._src._version_check import require_jax
      >>> require_jax("corgrad_jax", "0.5.3", "jax.sharding.get_abstract_mesh")  # passes
    """
    installed = installed_jax_version()
    if release(installed) < release(minimum):
        raise ImportError(
            f"{package} needs jax>={minimum} ({needed_for}), but jax {installed} is "
            f'installed. Upgrade jax and jaxlib together: pip install -U "jax>={minimum}" '
            f"(on an accelerator, the jax[cuda12] or jax[tpu] extra of that release)."
        )


require_jax("corgrad_jax", MINIMUM_JAX, "jax.sharding.get_abstract_mesh")
