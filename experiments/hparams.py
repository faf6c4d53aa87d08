"""A hyperparameter: its default, its random-search distribution and the values it takes.

The registries declare their hyperparameters with :class:`HParam`: an algorithm its own
(:mod:`experiments.algorithms`), a dataset its optimizer's (:mod:`experiments.data`),
and :mod:`experiments.hparams_registry` assembles a run's from them, as DomainBed's
``hparams_registry.py`` does.

Example:
  >>> lr = HParam(1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)), POSITIVE)
  >>> lr.domain.check("lr", 3e-4), lr.domain.describe()
  (0.0003, 'a float > 0')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

HParams = dict[str, Any]
Sampler = Callable[[np.random.RandomState], Any]


@dataclasses.dataclass(frozen=True)
class Domain:
    """The values a hyperparameter takes: a number in a range, or one of some choices.

    Attributes:
        kind: ``float``, ``int`` or ``str``.
        low: the lower bound of a number (None: unbounded).
        high: the upper bound of a number (None: unbounded).
        low_open: whether ``low`` itself is excluded.
        high_open: whether ``high`` itself is excluded.
        choices: the allowed strings, for ``kind=str``.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """What is expected, e.g. ``a float in (0, 1]`` or ``one of 'a', 'b'``."""
        if self.kind is str:
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        noun = "an integer" if self.kind is int else "a float"
        if self.low is not None and self.high is not None:
            return (f"{noun} in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        return noun

    def check(self, name: str, value: Any) -> Any:
        """``value`` as this domain's type (an integral float as an int, an int as a float).

        Raises:
            ValueError: one line naming the hparam, the value and what is expected.
        """
        expected = f"hparam {name}: {value!r} is not {self.describe()}"
        if self.kind is str:
            if value not in self.choices:
                raise ValueError(expected)
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(expected)
        if not math.isfinite(value):
            raise ValueError(expected)
        if self.kind is int:
            if value != int(value):
                raise ValueError(expected)
            value = int(value)
        else:
            value = float(value)
        below = self.low is not None and (value < self.low or self.low_open and value == self.low)
        above = self.high is not None and (
            value > self.high or self.high_open and value == self.high)
        if below or above:
            raise ValueError(expected)
        return value


PROBABILITY = Domain(float, 0.0, 1.0)
"""A float in [0, 1]."""
POSITIVE = Domain(float, 0.0, low_open=True)
"""A float > 0."""
NON_NEGATIVE = Domain(float, 0.0)
"""A float >= 0."""
COUNT = Domain(int, 1)
"""An integer >= 1."""


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hyperparameter of a registry entry.

    Attributes:
        default: the value of ``hparams_seed`` 0.
        sample: draws the random-search value from a ``np.random.RandomState`` seeded
            by DomainBed's ``seed_hash(seed, name)``.
        domain: the values it may take (overrides are checked against it).
    """

    default: Any
    sample: Sampler
    domain: Domain


HParamSpecs = Mapping[str, HParam]
"""Hyperparameters by name."""
