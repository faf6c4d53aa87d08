"""A registry: named entries in the order they were registered, with one error for an
unknown name. The algorithms, datasets and models of the trainer are three of them.

Example:
  >>> import dataclasses
  >>> @dataclasses.dataclass(frozen=True)
  ... class Entry:
  ...     name: str
  >>> colors = Registry[Entry]("color")
  >>> _ = colors.register(Entry("red"))
  >>> colors.entry("red"), list(colors)
  (Entry(name='red'), ['red'])
  >>> colors.entry("blue")
  Traceback (most recent call last):
  ValueError: unknown color 'blue'; expected one of red
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    """An entry: anything with a ``name``."""

    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(dict[str, T], Generic[T]):
    """Entries by name (a ``dict``), in registration order.

    Args:
        kind: what an entry is, for messages (``"algorithm"``).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, entry: T) -> T:
        """Adds ``entry`` after the ones registered before; returns it.

        Raises:
            ValueError: its name is taken.
        """
        if entry.name in self:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self[entry.name] = entry
        return entry

    def entry(self, name: str) -> T:
        """The entry called ``name``.

        Raises:
            ValueError: no such entry, naming the known ones.
        """
        try:
            return self[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; expected one of {', '.join(self)}"
            ) from None
