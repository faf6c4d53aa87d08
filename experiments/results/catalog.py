"""What DomainBed knows by name: its datasets, their environments, its algorithms.

DomainBed's ``collect_results.py`` orders its tables by two lists of its own code, and
names a dataset's columns after the dataset class's ``ENVIRONMENTS``. A results file of
DomainBed holds neither, so the names are kept here, as data, from DomainBed at commit
``b93c22a1cfc3b2428398272c1a116c8de1f4139e`` (``domainbed/datasets.py``:
``DATASETS`` and each class's ``ENVIRONMENTS``; ``domainbed/algorithms.py``:
``ALGORITHMS``).

The order of a table (DomainBed's ``print_results_tables``, extended to this trainer's
runs, whose names DomainBed does not know):

* datasets: DomainBed's ``DATASETS`` order; then any other dataset, alphabetically
  (DomainBed leaves those out of its tables);
* algorithms: DomainBed's ``ALGORITHMS`` order; then the names of ``known`` (this
  trainer's algorithms, in their order); then the rest in the order they first appear.

Example:
    >>> dataset_order(["PACS", "MyData", "VLCS"])
    ['VLCS', 'PACS', 'MyData']
    >>> algorithm_order(["corgrad", "IRM", "erm", "ERM", "Mine"], known=["erm", "corgrad"])
    ['ERM', 'IRM', 'erm', 'corgrad', 'Mine']
    >>> DOMAINBED_ENVIRONMENTS["VLCS"]
    ('C', 'L', 'S', 'V')
"""

from __future__ import annotations

from collections.abc import Iterable

_SPAWRIOUS_ENVIRONMENTS = ("Test", "SC_group_1", "SC_group_2")

DOMAINBED_ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "Debug28": ("0", "1", "2"),
    "Debug224": ("0", "1", "2"),
    "ColoredMNIST": ("+90%", "+80%", "-90%"),
    "RotatedMNIST": ("0", "15", "30", "45", "60", "75"),
    "VLCS": ("C", "L", "S", "V"),
    "PACS": ("A", "C", "P", "S"),
    "OfficeHome": ("A", "C", "P", "R"),
    "TerraIncognita": ("L100", "L38", "L43", "L46"),
    "DomainNet": ("clip", "info", "paint", "quick", "real", "sketch"),
    "SVIRO": (
        "aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe",
    ),
    "WILDSCamelyon": tuple(f"hospital_{i}" for i in range(5)),
    "WILDSFMoW": tuple(f"region_{i}" for i in range(6)),
    "SpawriousO2O_easy": _SPAWRIOUS_ENVIRONMENTS,
    "SpawriousO2O_medium": _SPAWRIOUS_ENVIRONMENTS,
    "SpawriousO2O_hard": _SPAWRIOUS_ENVIRONMENTS,
    "SpawriousM2M_easy": _SPAWRIOUS_ENVIRONMENTS,
    "SpawriousM2M_medium": _SPAWRIOUS_ENVIRONMENTS,
    "SpawriousM2M_hard": _SPAWRIOUS_ENVIRONMENTS,
}  # fmt: skip
"""DomainBed's datasets, in its ``DATASETS`` order, with their environments' names."""

DOMAINBED_ALGORITHMS: tuple[str, ...] = (
    "ERM", "ERMPlusPlus", "Fish", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD",
    "DANN", "CDANN", "MTL", "SagNet", "ARM", "VREx", "RSC", "SD", "ANDMask", "SANDMask",
    "IGA", "SelfReg", "Fishr", "TRM", "IB_ERM", "IB_IRM", "CAD", "CondCAD", "Transfer",
    "CausIRL_CORAL", "CausIRL_MMD", "EQRM", "RDM", "ADRMX", "URM",
)  # fmt: skip
"""DomainBed's algorithms, in its ``ALGORITHMS`` order (the rows of its tables)."""


def dataset_order(datasets: Iterable[str]) -> list[str]:
    """The datasets in table order: DomainBed's first, in its order; then the others.

    Args:
      datasets: dataset names, in any order, repeats allowed.

    Returns:
      Each name once: DomainBed's datasets in ``DOMAINBED_ENVIRONMENTS`` order, then the
      others alphabetically.
    """
    present = set(datasets)
    known = [name for name in DOMAINBED_ENVIRONMENTS if name in present]
    return known + sorted(present - set(known))


def algorithm_order(algorithms: Iterable[str], known: Iterable[str] = ()) -> list[str]:
    """The algorithms in table order (DomainBed's ``alg_names``, extended).

    Args:
      algorithms: algorithm names in the order they first appear in the records,
        repeats allowed.
      known: further names with an order of their own (this trainer's algorithms).

    Returns:
      Each name once: DomainBed's algorithms in ``DOMAINBED_ALGORITHMS`` order, then
      those of ``known`` in its order, then the rest in order of first appearance.
    """
    present = list(dict.fromkeys(algorithms))
    first = [name for name in DOMAINBED_ALGORITHMS if name in present]
    second = [name for name in dict.fromkeys(known) if name in present and name not in first]
    placed = set(first) | set(second)
    return first + second + [name for name in present if name not in placed]
