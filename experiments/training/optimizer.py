"""An algorithm of the registry, placed on the trainer's mesh and chained with Adam.

::

    optax.chain(partitioned(algorithm), [add_decayed_weights(wd)], adam(lr))

:func:`corgrad_jax.partitioned` splits every stacked leaf into contiguous ranges over
the mesh's devices (:mod:`experiments.training.parallel`); on one device it is the
algorithm itself. An entry with ``torch_layout`` (``corgrad_official``) reads kernels in
PyTorch's layout (:mod:`experiments.algorithms.torch_layout`) and is split along their
rows only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

import corgrad_jax
from experiments.algorithms import Algorithm, get_algorithm
from experiments.algorithms.torch_layout import in_torch_layout, torch_shape
from experiments.training.parallel import MESH_AXES

DIAGNOSTICS = ("modification_frequency", "modification_ratio", "dominant_fraction")
"""The per-step statistics every algorithm's state carries (the paper's Figs. 6, 7)."""


def build_algorithm(
    algorithm: str | Algorithm,
    hparams: Mapping[str, Any],
    *,
    seed: int,
    total_steps: int,
    num_domains: int,
) -> optax.GradientTransformation:
    """The aggregation of stacked per-domain gradients of ``algorithm``, split over the
    trainer's mesh axes.

    Args:
        algorithm: a registered algorithm, or its name.
        hparams: the run's hyperparameters.
        seed: seeds the algorithm's random domain orders.
        total_steps: the run's length (CorGrad's decaying alpha).
        num_domains: the number of training domains D (GradVac's and Nash-MTL's state).

    Raises:
        ValueError: an unknown algorithm.
    """
    entry = get_algorithm(algorithm) if isinstance(algorithm, str) else algorithm
    inner = entry.build(hparams, seed=seed, total_steps=total_steps, num_domains=num_domains)
    if entry.torch_layout:
        return in_torch_layout(corgrad_jax.partitioned(inner, MESH_AXES, keep_leading_axis=True))
    return corgrad_jax.partitioned(inner, MESH_AXES)


def build_optimizer(
    algorithm: str | Algorithm,
    hparams: Mapping[str, Any],
    *,
    seed: int,
    total_steps: int,
    num_domains: int,
) -> optax.GradientTransformation:
    """``optax.chain(algorithm, adam(lr))``, with PyTorch-Adam-style L2 weight decay
    (added to the aggregated gradient before Adam) when ``hparams["weight_decay"] > 0``."""
    aggregate = build_algorithm(
        algorithm, hparams, seed=seed, total_steps=total_steps, num_domains=num_domains)
    weight_decay = float(hparams.get("weight_decay", 0.0))
    decay = [optax.add_decayed_weights(weight_decay)] if weight_decay > 0 else []
    return optax.chain(aggregate, *decay, optax.adam(float(hparams["lr"])))


def stacked_layout(
    algorithm: str | Algorithm, path: tuple[Any, ...], shape: tuple[int, ...]
) -> tuple[tuple[int, ...], bool]:
    """How ``algorithm`` reads the stacked leaf at ``path`` of ``shape`` ``(D, ...)``: its
    shape, and whether its :func:`corgrad_jax.partitioned` keeps the leading axis."""
    entry = get_algorithm(algorithm) if isinstance(algorithm, str) else algorithm
    if not entry.torch_layout:
        return shape, False
    return torch_shape(path, shape), True


def diagnostics(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """The last update's :data:`DIAGNOSTICS`, read from the optimizer's state."""
    return {name: optax.tree_utils.tree_get(opt_state, name) for name in DIAGNOSTICS}
