"""Every algorithm of the trainer, as an optax transformation built from its hparams.

All of them take the per-domain gradients stacked on axis 0 (one minibatch per training
domain and step) and return one update, which Adam then scales::

    optax.chain(algorithm, optax.adam(lr))   # plus L2 weight decay when it is non-zero

=========================  =========================================================
name                       transformation (:mod:`corgrad_jax`)
=========================  =========================================================
``erm``                    ``mean_gradients()``: the mean of the domain losses
``pcgrad``                 ``pcgrad()``: whole-model projections (Yu et al. 2020)
``agr_sum``                ``agreement_sum()`` (Mansilla et al. 2021)
``agr_rand``               ``agreement_rand()`` (Mansilla et al. 2021)
``and_mask``               ``and_mask(tau)`` (Parascandolo et al. 2021)
``corgrad``                ``corgrad(num_slices, log_decay_schedule(alpha, steps))``:
                           layering + slicing + smoothing (L+S+D), the paper's method
``corgrad_layer``          ``corgrad(granularity="layer", alpha=None)``: L (Table 2)
``corgrad_no_smoothing``   ``corgrad(num_slices, alpha=None)``: L+S (Table 2)
``corgrad_official``       ``corgrad(num_slices, alpha, variant="official")``, on the
                           kernels in PyTorch layout (see :func:`in_torch_layout`)
=========================  =========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

import corgrad_jax
from experiments.parallel import MESH_AXES

ALGORITHMS = (
    "erm",
    "pcgrad",
    "agr_sum",
    "agr_rand",
    "and_mask",
    "corgrad",
    "corgrad_layer",
    "corgrad_no_smoothing",
    "corgrad_official",
)
"""The algorithms' names, in the order of the results table."""

DISPLAY_NAMES = {
    "erm": "ERM",
    "pcgrad": "PCGrad",
    "agr_sum": "AgrSum",
    "agr_rand": "AgrRand",
    "and_mask": "AND-mask",
    "corgrad": "CorGrad",
    "corgrad_layer": "CorGrad (L)",
    "corgrad_no_smoothing": "CorGrad (L+S)",
    "corgrad_official": "CorGrad (official code)",
}

# Flax kernel layouts -> PyTorch's, behind the leading domain axis:
# conv (D, H, W, I, O) -> (D, O, I, H, W); dense (D, I, O) -> (D, O, I).
_TO_TORCH = {5: (0, 4, 3, 1, 2), 3: (0, 2, 1)}


def _torch_permutation(path: tuple[Any, ...], leaf: jax.Array) -> tuple[int, ...] | None:
    name = getattr(path[-1], "key", None) if path else None
    return _TO_TORCH.get(leaf.ndim) if name == "kernel" else None


def in_torch_layout(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` on stacked gradients whose kernels are laid out as in PyTorch.

    The official CorGrad code slices each parameter with ``torch.chunk`` along axis 0,
    the output channels in PyTorch's ``(out, in, kh, kw)`` layout; a Flax kernel is
    ``(kh, kw, in, out)``. This wrapper transposes every stacked ``kernel`` leaf to
    PyTorch's layout, applies ``inner`` and transposes the result back, so
    ``corgrad(variant="official")`` cuts the same pieces as the official code.
    Per-leaf algorithms are otherwise unaffected by a transposition.
    """

    def transpose(tree: Any, inverse: bool, stacked: bool) -> Any:
        def one(path: tuple[Any, ...], leaf: jax.Array) -> jax.Array:
            perm = _torch_permutation(path, leaf if stacked else leaf[None])
            if perm is None:
                return leaf
            if not stacked:
                perm = tuple(p - 1 for p in perm[1:])
            if inverse:
                perm = tuple(sorted(range(len(perm)), key=perm.__getitem__))
            return jnp.transpose(leaf, perm)

        return jax.tree_util.tree_map_with_path(one, tree)

    def update_fn(
        updates: Any, state: Any, params: Any = None, **extra_args: Any
    ) -> tuple[Any, Any]:
        del params  # only used by `inner` to check shapes, which transposing would copy
        torch_updates, state = inner.update(
            transpose(updates, False, True), state, None, **extra_args
        )
        return transpose(torch_updates, True, False), state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def stacked_layout(name: str, path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[
    tuple[int, ...], bool
]:
    """How algorithm ``name`` reads the stacked leaf at ``path`` of ``shape`` ``(D, ...)``:
    its shape (PyTorch's layout for ``corgrad_official``'s kernels), and whether its
    :func:`corgrad_jax.partitioned` keeps the leading axis."""
    if name != "corgrad_official":
        return shape, False
    permutation = _TO_TORCH.get(len(shape)) if getattr(path[-1], "key", None) == "kernel" else None
    if permutation is not None:
        shape = tuple(shape[axis] for axis in permutation)
    return shape, True


def build_algorithm(
    name: str, hparams: Mapping[str, Any], *, seed: int, total_steps: int
) -> optax.GradientTransformation:
    """The aggregation of stacked per-domain gradients of algorithm ``name``.

    Wrapped in :func:`corgrad_jax.partitioned` over the trainer's mesh axes: on a mesh
    (:mod:`experiments.parallel`) every stacked leaf is split into contiguous ranges
    over all devices, so the algorithm runs on shards; on one device it is unchanged.

    Args:
        name: one of :data:`ALGORITHMS`.
        hparams: the run's hyperparameters (``tau``, ``num_slices``, ``alpha``,
            ``alpha_schedule`` as the algorithm needs).
        seed: seeds the algorithm's random domain orders (pcgrad, agr_rand, corgrad).
        total_steps: the run's length, for ``alpha``'s log decay.

    Raises:
        ValueError: ``name`` is not an algorithm.
    """
    if name == "corgrad_official":
        official = corgrad_jax.corgrad(
            int(hparams["num_slices"]), float(hparams["alpha"]), variant="official", seed=seed
        )
        return in_torch_layout(
            corgrad_jax.partitioned(official, MESH_AXES, keep_leading_axis=True)
        )
    if name == "erm":
        algorithm = corgrad_jax.mean_gradients()
    elif name == "pcgrad":
        algorithm = corgrad_jax.pcgrad(seed=seed)
    elif name == "agr_sum":
        algorithm = corgrad_jax.agreement_sum()
    elif name == "agr_rand":
        algorithm = corgrad_jax.agreement_rand(seed=seed)
    elif name == "and_mask":
        algorithm = corgrad_jax.and_mask(threshold=float(hparams["tau"]))
    elif name == "corgrad":
        alpha: Any = float(hparams["alpha"])
        if hparams.get("alpha_schedule", "constant") == "log_decay":
            alpha = corgrad_jax.log_decay_schedule(alpha, max(total_steps, 2))
        algorithm = corgrad_jax.corgrad(int(hparams["num_slices"]), alpha, seed=seed)
    elif name == "corgrad_layer":
        algorithm = corgrad_jax.corgrad(granularity="layer", alpha=None, seed=seed)
    elif name == "corgrad_no_smoothing":
        algorithm = corgrad_jax.corgrad(int(hparams["num_slices"]), alpha=None, seed=seed)
    else:
        raise ValueError(f"unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}")
    return corgrad_jax.partitioned(algorithm, MESH_AXES)


def uses_total_steps(name: str, hparams: Mapping[str, Any]) -> bool:
    """Whether :func:`build_algorithm` depends on ``total_steps`` (a decaying alpha)."""
    return name == "corgrad" and hparams.get("alpha_schedule", "constant") == "log_decay"


def build_optimizer(
    name: str, hparams: Mapping[str, Any], *, seed: int, total_steps: int
) -> optax.GradientTransformation:
    """``optax.chain(algorithm, adam(lr))``, with PyTorch-Adam-style L2 weight decay
    (added to the aggregated gradient before Adam) when ``hparams["weight_decay"] > 0``."""
    algorithm = build_algorithm(name, hparams, seed=seed, total_steps=total_steps)
    weight_decay = float(hparams.get("weight_decay", 0.0))
    decay = [optax.add_decayed_weights(weight_decay)] if weight_decay > 0 else []
    return optax.chain(algorithm, *decay, optax.adam(float(hparams["lr"])))


DIAGNOSTICS = ("modification_frequency", "modification_ratio", "dominant_fraction")
"""The per-step statistics every algorithm's state carries (the paper's Figs. 6, 7)."""


def diagnostics(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """The last update's :data:`DIAGNOSTICS`, read from the optimizer's state."""
    return {name: optax.tree_utils.tree_get(opt_state, name) for name in DIAGNOSTICS}
