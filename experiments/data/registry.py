"""The dataset registry: one :class:`DatasetSpec` per dataset, as DomainBed's
``datasets.py`` keeps ``ENVIRONMENTS``, ``N_STEPS`` and ``CHECKPOINT_FREQ`` on one class.

An entry holds what the rest of the trainer needs to know of a dataset without reading
it: its environments, classes and input shape, DomainBed's run length and checkpoint
frequency, its default model, its optimizer's hyperparameters, and its loader. A new
dataset is one :func:`register` call. A folder with one sub-folder per domain, given by
path, gets an entry made from its folder names (:func:`get_dataset_spec`).

Only NumPy is imported here; the loaders import their readers (PIL, Grain, tfds) when
called.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from experiments.data import mnist
from experiments.data.base import EnvironmentSplits
from experiments.hparams import COUNT, NON_NEGATIVE, POSITIVE, HParam, HParamSpecs
from experiments.registry import Registry

AUGMENTATIONS = ("device", "host")
"""Where a dataset read from image files is augmented (:func:`load_dataset`)."""

Loader = Callable[..., EnvironmentSplits]
"""``load(spec, data_dir, *, test_envs, holdout_fraction, trial_seed, batch_size, seed)``,
and ``augmentation`` for a dataset read from image files
(:meth:`DatasetSpec.reads_image_files`)."""

SMALL_IMAGE_HPARAMS: HParamSpecs = {
    "lr": HParam(1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)), POSITIVE),
    "weight_decay": HParam(0.0, lambda r: 0.0, NON_NEGATIVE),
    "batch_size": HParam(64, lambda r: int(2 ** r.uniform(3, 9)), COUNT),
}
"""DomainBed's optimizer hparams of the 28x28 datasets (``SMALL_IMAGES``, MNIST_CNN)."""

IMAGE_HPARAMS: HParamSpecs = {
    "lr": HParam(5e-5, lambda r: float(10 ** r.uniform(-5, -3.5)), POSITIVE),
    "weight_decay": HParam(0.0, lambda r: float(10 ** r.uniform(-6, -2)), NON_NEGATIVE),
    "batch_size": HParam(32, lambda r: int(2 ** r.uniform(3, 5.5)), COUNT),
}
"""DomainBed's optimizer hparams of the image datasets (ResNet-18)."""

DOMAIN_NET_HPARAMS: HParamSpecs = {
    **IMAGE_HPARAMS,
    "batch_size": HParam(32, lambda r: int(2 ** r.uniform(3, 5)), COUNT),
}
"""DomainNet draws smaller batches (DomainBed)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset, known without reading it.

    Attributes:
        name: the ``--dataset`` value.
        environments: the domains' names, in DomainBed's order (the ``--test_envs``
            indices).
        num_classes: the number of labels.
        input_shape: one example's ``(H, W, C)``.
        load: the loader (:data:`Loader`).
        model: the default model (:mod:`experiments.models`).
        hparams: the optimizer's hyperparameters on this dataset.
        steps: DomainBed's ``N_STEPS``.
        checkpoint_freq: DomainBed's ``CHECKPOINT_FREQ``.
        folders: for a registered dataset read from disk, its folder under
            ``data_dir`` (the first is DomainBed's download's); empty otherwise.
        root: for a dataset given by path, that folder.
    """

    name: str
    environments: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, int, int]
    load: Loader
    model: str
    hparams: HParamSpecs
    steps: int = 5000
    checkpoint_freq: int = 300
    folders: tuple[str, ...] = ()
    root: str | None = None

    @property
    def needs_data_dir(self) -> bool:
        """Whether it is read from a folder under ``data_dir``."""
        return bool(self.folders)

    @property
    def reads_image_files(self) -> bool:
        """Whether it is read from image files (a registered folder dataset or a folder
        given by path): the datasets that ``augmentation`` applies to."""
        return bool(self.folders) or self.root is not None

    def check_test_envs(self, test_envs: Sequence[int]) -> None:
        """Raises ValueError unless ``test_envs`` are distinct environment indices that
        leave at least 2 training domains (what gradient surgery needs)."""
        environments = self.environments
        for env in test_envs:
            if not 0 <= env < len(environments):
                raise ValueError(
                    f"test env {env} is out of range: {self.name} has {len(environments)} "
                    f"environments, 0-{len(environments) - 1} ({', '.join(environments)})"
                )
        if len(set(test_envs)) != len(test_envs):
            raise ValueError(f"test envs {list(test_envs)} repeat an environment")
        if len(environments) - len(test_envs) < 2:
            raise ValueError(
                f"test envs {list(test_envs)} leave fewer than 2 of {self.name}'s "
                f"{len(environments)} environments to train on; gradient surgery needs at "
                "least 2 training domains"
            )

    def train_envs(self, test_envs: Sequence[int]) -> tuple[int, ...]:
        """Every environment not in ``test_envs``, ascending."""
        return tuple(env for env in range(len(self.environments)) if env not in test_envs)


DATASETS: Registry[DatasetSpec] = Registry("dataset")
"""Every registered dataset by name."""
register = DATASETS.register


def _load_mnist(spec: DatasetSpec, data_dir: str | None, **options: Any) -> EnvironmentSplits:
    del data_dir
    return mnist.load_mnist_environments(spec.name, **options)


def _load_folder(spec: DatasetSpec, data_dir: str | None, **options: Any) -> EnvironmentSplits:
    try:
        from experiments.data.folder import load_folder_dataset
    except ImportError as error:  # Pillow, Grain, tensorflow-datasets
        raise ValueError(
            f"dataset {spec.name} is read from image files and needs the experiments "
            f'extra ({error}): pip install -e ".[experiments]"'
        ) from None
    return load_folder_dataset(spec, data_dir, **options)


for _name in ("RotatedMNIST", "ColoredMNIST"):
    register(DatasetSpec(
        name=_name,
        environments=mnist.ENVIRONMENTS[_name],
        num_classes=mnist.NUM_CLASSES[_name],
        input_shape=mnist.INPUT_SHAPES[_name],
        load=_load_mnist,
        model="mnist_cnn",
        hparams=SMALL_IMAGE_HPARAMS,
        checkpoint_freq=100,
    ))

_FOLDER_DATASETS = (
    # name, folders under data_dir, domains, classes (DomainBed's order and names)
    ("PACS", ("PACS",), ("art_painting", "cartoon", "photo", "sketch"), 7),
    ("VLCS", ("VLCS",), ("Caltech101", "LabelMe", "SUN09", "VOC2007"), 5),
    ("OfficeHome", ("office_home", "OfficeHome"), ("Art", "Clipart", "Product", "Real World"),
     65),
    # Sorted as DomainBed lists them (sorted(os.scandir)): L100, L38, L43, L46.
    ("TerraIncognita", ("terra_incognita", "TerraIncognita"),
     ("location_100", "location_38", "location_43", "location_46"), 10),
    ("DomainNet", ("domain_net", "DomainNet"),
     ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), 345),
)
for _name, _folders, _domains, _classes in _FOLDER_DATASETS:
    register(DatasetSpec(
        name=_name,
        environments=_domains,
        num_classes=_classes,
        input_shape=(224, 224, 3),
        load=_load_folder,
        model="resnet18",
        hparams=DOMAIN_NET_HPARAMS if _name == "DomainNet" else IMAGE_HPARAMS,
        steps=15000 if _name == "DomainNet" else 5000,
        checkpoint_freq=1000 if _name == "DomainNet" else 300,
        folders=_folders,
    ))


def get_dataset_spec(name: str, data_dir: str | None = None) -> DatasetSpec:
    """The entry of ``name``: a registered dataset, or a folder of domain folders.

    A folder (a path, or a name under ``data_dir``) gets an entry made from its folder
    names alone, no image read: its sorted sub-folders are the domains, the class
    folders of the first one the classes, with ResNet-18 at 224 x 224.

    Raises:
        ValueError: neither a registered name nor a folder (naming the known ones), or
            a folder without domain folders.
    """
    registered = {key.lower(): spec for key, spec in DATASETS.items()}
    if name.lower() in registered:
        return registered[name.lower()]
    from experiments.data import folder_layout

    try:
        root = folder_layout.find_folder(name, data_dir)
    except FileNotFoundError:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}, or a "
            f"directory laid out as {name}/<domain>/<class>/<image>"
        ) from None
    domains, num_classes = folder_layout.folder_classes(root)
    return DatasetSpec(
        name=os.path.basename(os.path.normpath(root)),
        environments=domains,
        num_classes=num_classes,
        input_shape=(224, 224, 3),
        load=_load_folder,
        model="resnet18",
        hparams=IMAGE_HPARAMS,
        root=root,
    )


def load_dataset(
    spec: DatasetSpec,
    data_dir: str | None,
    *,
    test_envs: Sequence[int],
    holdout_fraction: float,
    trial_seed: int,
    batch_size: int,
    seed: int,
    augmentation: str = "device",
) -> EnvironmentSplits:
    """Loads ``spec`` split into environments (see :class:`~experiments.data.base.
    EnvironmentSplits`), after checking ``test_envs``.

    Args:
        spec: the dataset.
        data_dir: root of the datasets read from disk (unused by the embedded ones).
        test_envs: held-out environments, never sampled for training.
        holdout_fraction: share of every environment kept as its ``out`` split.
        trial_seed: seeds the splits (and the embedded datasets' construction).
        batch_size: examples per training environment and step.
        seed: seeds the minibatch order (and the augmentation).
        augmentation: where a dataset read from image files is augmented: ``"device"``
            (decoded once into the cache, augmented on the accelerator) or ``"host"``
            (decoded and augmented with PIL for every example); unused by the others.

    Raises:
        ValueError: bad ``test_envs``, a malformed folder, missing readers.
        FileNotFoundError: the dataset's folder does not exist.
    """
    test_envs = tuple(test_envs)
    spec.check_test_envs(test_envs)
    images = {"augmentation": augmentation} if spec.reads_image_files else {}
    return spec.load(
        spec,
        data_dir,
        test_envs=test_envs,
        holdout_fraction=holdout_fraction,
        trial_seed=trial_seed,
        batch_size=batch_size,
        seed=seed,
        **images,
    )
