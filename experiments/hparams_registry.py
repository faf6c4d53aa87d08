"""Hyperparameters of a run: defaults and random search, as DomainBed's registry.

A run's hyperparameters come from three places: :data:`COMMON_HPARAMS` (every run, as
in DomainBed), the dataset's entry (the optimizer's: ``lr``, ``weight_decay``,
``batch_size``; :mod:`experiments.data.registry`) and the algorithm's entry (its own,
e.g. CorGrad's ``num_slices`` and ``alpha``; :mod:`experiments.algorithms.entries`).
Each is an :class:`~experiments.hparams.HParam`: a default and a distribution.
``hparams_seed`` 0 gives the defaults; any other seed draws every hyperparameter
independently, from a generator seeded by ``seed_hash(random_seed, name)``, so the
shared names take the values DomainBed draws for the same seed.

Example:
  >>> get_hparams("corgrad", "RotatedMNIST", hparams_seed=0, trial_seed=0)["num_slices"]
  10
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.algorithms import Algorithm, get_algorithm
from experiments.data import DatasetSpec, get_dataset_spec
from experiments.hparams import Domain, HParam, HParams, HParamSpecs
from experiments.seeding import seed_hash

COMMON_HPARAMS: HParamSpecs = {
    "resnet_dropout": HParam(0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])),
                             Domain(float, 0.0, 1.0, high_open=True)),
}
"""Hyperparameters of every run (DomainBed's): ResNet-18's dropout before ``fc``."""


def hparam_specs(algorithm: str | Algorithm, dataset: str | DatasetSpec) -> HParamSpecs:
    """Every hyperparameter of ``algorithm`` on ``dataset``, by name.

    Raises:
        ValueError: an unknown algorithm or dataset.
    """
    if isinstance(algorithm, str):
        algorithm = get_algorithm(algorithm)
    if isinstance(dataset, str):
        dataset = get_dataset_spec(dataset)
    specs = {**COMMON_HPARAMS, **algorithm.hparams}
    for name, spec in dataset.hparams.items():
        assert name not in specs, name
        specs[name] = spec
    return specs


def default_hparams(algorithm: str | Algorithm, dataset: str | DatasetSpec) -> HParams:
    """The default hyperparameters (``hparams_seed`` 0)."""
    return {name: spec.default for name, spec in hparam_specs(algorithm, dataset).items()}


def random_hparams(algorithm: str | Algorithm, dataset: str | DatasetSpec, seed: int) -> HParams:
    """Hyperparameters drawn at random, reproducibly from ``seed``."""
    return {
        name: spec.sample(np.random.RandomState(seed_hash(seed, name)))
        for name, spec in hparam_specs(algorithm, dataset).items()
    }


def get_hparams(
    algorithm: str | Algorithm,
    dataset: str | DatasetSpec,
    *,
    hparams_seed: int,
    trial_seed: int,
    overrides: dict[str, Any] | None = None,
) -> HParams:
    """The hyperparameters of one run, as DomainBed's ``train.py`` chooses them.

    Args:
        algorithm: an algorithm's name or entry (:mod:`experiments.algorithms`).
        dataset: a dataset's name or entry (:mod:`experiments.data`).
        hparams_seed: 0 for the defaults, otherwise a random-search draw.
        trial_seed: with ``hparams_seed``, seeds the draw (DomainBed draws with
            ``seed_hash(hparams_seed, trial_seed)``).
        overrides: values that replace the registry's (the ``--hparams`` JSON).

    Raises:
        ValueError: an override names a hyperparameter this algorithm does not have, or
            gives one a value of the wrong type or out of its range (one line each).
    """
    specs = hparam_specs(algorithm, dataset)
    if hparams_seed == 0:
        hparams = default_hparams(algorithm, dataset)
    else:
        hparams = random_hparams(algorithm, dataset, seed_hash(hparams_seed, trial_seed))
    unknown = sorted(set(overrides or {}) - set(specs))
    if unknown:
        name = algorithm if isinstance(algorithm, str) else algorithm.name
        data = dataset if isinstance(dataset, str) else dataset.name
        raise ValueError(
            f"unknown hparams {', '.join(unknown)} for {name} on {data}; "
            f"expected some of {', '.join(sorted(specs))}"
        )
    for name, value in (overrides or {}).items():
        hparams[name] = specs[name].domain.check(name, value)
    return hparams
