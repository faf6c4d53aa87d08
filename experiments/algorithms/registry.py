"""The algorithm registry: one :class:`Algorithm` entry per method of the trainer.

An entry says everything the rest of the project needs of a method: its name on the
command line, its name in tables, its hyperparameters (defaults, random search, valid
values), how to build its :mod:`corgrad_jax` transformation from them, and the two facts
the trainer must know (the kernel layout it reads, whether it needs the run's length).
The CLI choices, the hparams registry, the results tables and the analysis all read
the registry, so a new method is one call of :func:`register`
(:mod:`experiments.algorithms.entries`).

This module imports no JAX: reading names and hyperparameters (the results tables)
stays light; :mod:`corgrad_jax` is imported when an algorithm is built.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from experiments.hparams import HParamSpecs
from experiments.registry import Registry

if TYPE_CHECKING:
    import optax

Builder = Callable[..., "optax.GradientTransformation"]
"""``build(hparams, *, seed, total_steps, num_domains)``: the algorithm's stacked-gradient
transformation."""


def library() -> ModuleType:
    """:mod:`corgrad_jax`, imported on the first build."""
    return importlib.import_module("corgrad_jax")


def _never(hparams: Mapping[str, Any]) -> bool:
    del hparams
    return False


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One method of the trainer.

    Attributes:
        name: the ``--algorithm`` value (``corgrad``).
        display_name: its name in tables (``CorGrad``).
        transformation: the :mod:`corgrad_jax` call it makes, for the docs.
        build: ``build(hparams, *, seed, total_steps, num_domains)`` returns the
            transformation of the stacked per-domain gradients (without Adam, and
            without the trainer's sharding wrapper). ``seed`` seeds its random domain
            orders and draws; ``num_domains`` (D, the training domains) sizes the state
            of the rules that keep some per pair of domains (GradVac, Nash-MTL).
        hparams: its own hyperparameters (the dataset's come from the dataset).
        torch_layout: it reads kernels in PyTorch's ``(out, in, kh, kw)`` layout (the
            official code's ``torch.chunk`` slices), and cuts rows of axis 0.
        uses_total_steps: whether ``build`` depends on ``total_steps`` for these hparams
            (CorGrad's decaying alpha); runs that differ only in length then share one
            compilation when it does not.
        paper_label: its row in the paper's Table 2 (``L+S+D``), if it has one.
        reference: the paper it comes from.
    """

    name: str
    display_name: str
    transformation: str
    build: Builder
    hparams: HParamSpecs = dataclasses.field(default_factory=dict)
    torch_layout: bool = False
    uses_total_steps: Callable[[Mapping[str, Any]], bool] = _never
    paper_label: str | None = None
    reference: str = ""


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")
"""Every registered algorithm by name, in the order of the results tables."""
register = ALGORITHMS.register
get_algorithm = ALGORITHMS.entry


def display_name(name: str) -> str:
    """The table name of algorithm ``name``; an unknown name (a DomainBed run's ``ERM``)
    as it is."""
    algorithm = ALGORITHMS.get(name)
    return name if algorithm is None else algorithm.display_name
