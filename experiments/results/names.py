"""How an algorithm is named in a table: this trainer's display names, else as it is.

The names live in :data:`experiments.algorithms.DISPLAY_NAMES`, a module that imports
JAX. The results layer does not import it: :func:`default_display_names` reads that
dictionary from the module's source (``ast``, nothing executed) the first time a name is
looked up. Every lookup goes through :func:`display_name`, the one place to rewire when
the names move.

Example:
    >>> display_name("corgrad", {"corgrad": "CorGrad"})
    'CorGrad'
    >>> display_name("SANDMask", {"corgrad": "CorGrad"})
    'SANDMask'
    >>> display_name("erm")
    'ERM'
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path

_SOURCE_MODULE = "experiments.algorithms"
_SOURCE_NAME = "DISPLAY_NAMES"


def _read_display_names() -> dict[str, str]:
    """``DISPLAY_NAMES`` of :mod:`experiments.algorithms`, from its source."""
    spec = importlib.util.find_spec(_SOURCE_MODULE)
    if spec is None or spec.origin is None:
        return {}
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == _SOURCE_NAME and node.value:
            names = ast.literal_eval(node.value)
            return {str(key): str(value) for key, value in names.items()}
    return {}


class _LazyDisplayNames(Mapping[str, str]):
    """A mapping read on first use (the table order of this trainer's algorithms)."""

    @functools.cached_property
    def _names(self) -> dict[str, str]:
        return _read_display_names()

    def __getitem__(self, algorithm: str) -> str:
        return self._names[algorithm]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


_DEFAULT = _LazyDisplayNames()


def default_display_names() -> Mapping[str, str]:
    """This trainer's ``{algorithm: display name}``, in its table order, read lazily."""
    return _DEFAULT


def display_name(algorithm: str, names: Mapping[str, str] | None = None) -> str:
    """The name of ``algorithm`` in a table.

    Args:
      algorithm: the name in the records' ``args`` (``"corgrad"``, DomainBed's ``"ERM"``).
      names: ``{algorithm: display name}``; None: :func:`default_display_names`.

    Returns:
      ``names[algorithm]``, or ``algorithm`` itself when it has no display name.
    """
    names = default_display_names() if names is None else names
    return names.get(algorithm, algorithm)
