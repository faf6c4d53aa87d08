"""How an algorithm is named in a table: the algorithm registry's display names, else as it is.

The names and the table order come from :data:`experiments.algorithms.ALGORITHMS`,
which imports no JAX. Every lookup goes through :func:`display_name`.

Example:
    >>> display_name("corgrad", {"corgrad": "CorGrad"})
    'CorGrad'
    >>> display_name("SANDMask", {"corgrad": "CorGrad"})
    'SANDMask'
    >>> display_name("erm")
    'ERM'
"""

from __future__ import annotations

from collections.abc import Mapping

from experiments.algorithms import ALGORITHMS


def default_display_names() -> Mapping[str, str]:
    """This trainer's ``{algorithm: display name}``, in its table order."""
    return {name: algorithm.display_name for name, algorithm in ALGORITHMS.items()}


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
