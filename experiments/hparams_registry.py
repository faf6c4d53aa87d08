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

from collections.abc import Callable
from typing import Any

import numpy as np

from experiments.seeding import seed_hash

SMALL_IMAGES = ("RotatedMNIST", "ColoredMNIST")
"""Datasets of 28x28 images, trained with ``MNIST_CNN`` (DomainBed's ``SMALL_IMAGES``)."""

HParams = dict[str, Any]
_Sampler = Callable[[np.random.RandomState], Any]


def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict[str, tuple[Any, Any]]:
    """``{name: (default, random draw)}`` for one algorithm on one dataset."""
    hparams: dict[str, tuple[Any, Any]] = {}

    def _hparam(name: str, default: Any, sample: _Sampler) -> None:
        assert name not in hparams, name
        random_state = np.random.RandomState(seed_hash(random_seed, name))
        hparams[name] = (default, sample(random_state))

    small_images = dataset in SMALL_IMAGES
    _hparam("resnet_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])))

    if algorithm == "and_mask":
        _hparam("tau", 1.0, lambda r: float(r.uniform(0.5, 1.0)))
    elif algorithm.startswith("corgrad"):
        if algorithm != "corgrad_layer":
            _hparam("num_slices", 10, lambda r: int(r.choice([5, 10, 20, 50])))
        if algorithm in ("corgrad", "corgrad_official"):
            _hparam("alpha", 0.6, lambda r: float(r.uniform(0.5, 1.0)))
        if algorithm == "corgrad":
            _hparam("alpha_schedule", "log_decay", lambda r: "log_decay")

    if small_images:
        _hparam("lr", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)))
        _hparam("weight_decay", 0.0, lambda r: 0.0)
        _hparam("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)))
    else:
        _hparam("lr", 5e-5, lambda r: float(10 ** r.uniform(-5, -3.5)))
        _hparam("weight_decay", 0.0, lambda r: float(10 ** r.uniform(-6, -2)))
        if dataset == "DomainNet":
            _hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5)))
        else:
            _hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, 5.5)))
    return hparams


def default_hparams(algorithm: str, dataset: str) -> HParams:
    """The default hyperparameters (``hparams_seed`` 0)."""
    return {name: default for name, (default, _) in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> HParams:
    """Hyperparameters drawn at random, reproducibly from ``seed``."""
    return {name: draw for name, (_, draw) in _hparams(algorithm, dataset, seed).items()}


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
        ValueError: an override names a hyperparameter this algorithm does not have.
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
    hparams.update(overrides or {})
    return hparams
