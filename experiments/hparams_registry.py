"""Hyperparameters of every algorithm and dataset: defaults and random search.

DomainBed's registry (``domainbed/hparams_registry.py``): each hyperparameter has a
default and a distribution for random search. ``hparams_seed`` 0 gives the defaults;
any other seed draws every hyperparameter independently, from a generator seeded by
``seed_hash(random_seed, name)``, so the shared names (``lr``, ``batch_size``,
``weight_decay``, ``resnet_dropout``) take the values DomainBed draws for the same seed.

CorGrad's ``num_slices`` = 10 and ``alpha`` = 0.6 are the paper's (Section 4.1); the
paper decays ``alpha`` to 0 over training (``alpha_schedule="log_decay"``), its official
code keeps it constant.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from experiments.seeding import seed_hash

SMALL_IMAGES = ("RotatedMNIST", "ColoredMNIST")
"""Datasets of 28x28 images, trained with ``MNIST_CNN`` (DomainBed's ``SMALL_IMAGES``)."""

HParams = dict[str, Any]
_Sampler = Callable[[np.random.RandomState], Any]


@dataclasses.dataclass(frozen=True)
class Domain:
    """The values a hyperparameter takes: a number in a range, or one of some choices.

    Attributes:
        kind: ``float``, ``int`` or ``str``.
        low, high: bounds of a number (None: unbounded).
        low_open, high_open: whether a bound itself is excluded.
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
POSITIVE = Domain(float, 0.0, low_open=True)
NON_NEGATIVE = Domain(float, 0.0)
COUNT = Domain(int, 1)


def _hparams(
    algorithm: str, dataset: str, random_seed: int
) -> dict[str, tuple[Any, Any, Domain]]:
    """``{name: (default, random draw, domain)}`` for one algorithm on one dataset."""
    hparams: dict[str, tuple[Any, Any, Domain]] = {}

    def _hparam(name: str, default: Any, sample: _Sampler, domain: Domain) -> None:
        assert name not in hparams, name
        random_state = np.random.RandomState(seed_hash(random_seed, name))
        hparams[name] = (default, sample(random_state), domain)

    small_images = dataset in SMALL_IMAGES
    _hparam("resnet_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])),
            Domain(float, 0.0, 1.0, high_open=True))

    if algorithm == "and_mask":
        _hparam("tau", 1.0, lambda r: float(r.uniform(0.5, 1.0)), PROBABILITY)
    elif algorithm.startswith("corgrad"):
        if algorithm != "corgrad_layer":
            _hparam("num_slices", 10, lambda r: int(r.choice([5, 10, 20, 50])), COUNT)
        if algorithm in ("corgrad", "corgrad_official"):
            _hparam("alpha", 0.6, lambda r: float(r.uniform(0.5, 1.0)), PROBABILITY)
        if algorithm == "corgrad":
            _hparam("alpha_schedule", "log_decay", lambda r: "log_decay",
                    Domain(str, choices=("log_decay", "constant")))

    if small_images:
        _hparam("lr", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)), POSITIVE)
        _hparam("weight_decay", 0.0, lambda r: 0.0, NON_NEGATIVE)
        _hparam("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)), COUNT)
    else:
        _hparam("lr", 5e-5, lambda r: float(10 ** r.uniform(-5, -3.5)), POSITIVE)
        _hparam("weight_decay", 0.0, lambda r: float(10 ** r.uniform(-6, -2)), NON_NEGATIVE)
        if dataset == "DomainNet":
            _hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5)), COUNT)
        else:
            _hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5)), COUNT)
    return hparams


def default_hparams(algorithm: str, dataset: str) -> HParams:
    """The default hyperparameters (``hparams_seed`` 0)."""
    return {name: default for name, (default, _, _) in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> HParams:
    """Hyperparameters drawn at random, reproducibly from ``seed``."""
    return {name: draw for name, (_, draw, _) in _hparams(algorithm, dataset, seed).items()}


def get_hparams(
    algorithm: str,
    dataset: str,
    *,
    hparams_seed: int,
    trial_seed: int,
    overrides: HParams | None = None,
) -> HParams:
    """The hyperparameters of one run, as DomainBed's ``train.py`` chooses them.

    Args:
        algorithm: a name from :data:`experiments.algorithms.ALGORITHMS`.
        dataset: the dataset's name (28x28 datasets get the MNIST settings).
        hparams_seed: 0 for the defaults, otherwise a random-search draw.
        trial_seed: with ``hparams_seed``, seeds the draw (DomainBed draws with
            ``seed_hash(hparams_seed, trial_seed)``).
        overrides: values that replace the registry's (the ``--hparams`` JSON).

    Raises:
        ValueError: an override names a hyperparameter this algorithm does not have, or
            gives one a value of the wrong type or out of its range (one line each).
    """
    if hparams_seed == 0:
        hparams = default_hparams(algorithm, dataset)
    else:
        hparams = random_hparams(algorithm, dataset, seed_hash(hparams_seed, trial_seed))
    unknown = sorted(set(overrides or {}) - set(hparams))
    if unknown:
        raise ValueError(
            f"unknown hparams {', '.join(unknown)} for {algorithm} on {dataset}; "
            f"expected some of {', '.join(sorted(hparams))}"
        )
    domains = {name: domain for name, (_, _, domain) in _hparams(algorithm, dataset, 0).items()}
    for name, value in (overrides or {}).items():
        hparams[name] = domains[name].check(name, value)
    return hparams
