"""The probe of Figures 6 and 7: every granularity's diagnostics of one step's gradients.

:class:`GranularityProbe` is a :class:`~experiments.training.steps.Probe` of the
training loop: inside the jitted step, the SAME stacked per-domain gradients that train
the model are fed to ``corgrad(granularity=g, alpha=None)`` for g in model, layer and
slice, whose states hold that step's diagnostics (``docs/algorithm.md``, Sec. 7,
"Diagnostics"):

- modification frequency: share of the (domain i, domain j, piece k) tests with a
  negative inner product (eq. 3);
- modification ratio: mean over the modified tests of ``||removed|| / ||g_i^k||``
  (the official code's ``change_percentage``).

The probes' updates are discarded, so all granularities are measured on one gradient
trajectory and differ only by how they cut it. The element granularity's diagnostics
are computed in closed form (:func:`element_statistics`, equal to the library's
``corgrad(granularity="element")``, which the tests check), alongside two other
element-level shares (``docs/algorithm.md``, Sec. 10, "Other facts from the paper"):

- ``pairwise_original``: share of the ordered pairs (i, j) and components k whose
  ORIGINAL components have a negative product; 1/2 on random gradients, whatever N.
  (The probe's own frequency counts a test only while ``g_i^k`` is unprojected: once a
  scalar piece conflicts it is zeroed, so on random gradients it is
  ``(1 - 1/2^(N-1)) / (N - 1)``, not 1/2.)
- ``all_agree``: share of components whose N domain signs all agree, what the official
  code logs as the fine-grained method's ``change_rate``; ``1/2^(N-1)`` on random
  gradients. :func:`random_reference` measures all three on random gradients.

Example:
  >>> import jax.numpy as jnp
  >>> probe = GranularityProbe(num_slices=2, seed=0)
  >>> params = {"w": jnp.zeros((2, 3))}
  >>> grads = {"w": jnp.array([[[1.0, 2, 3], [1, 1, 1]], [[-1.0, 2, 3], [1, 1, -1]]])}
  >>> _, metrics = probe(grads, params, probe.init(params))
  >>> round(float(metrics["element/all_agree"]), 3)  # 4 of the 6 components agree
  0.667
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import corgrad_jax

GRANULARITIES = corgrad_jax.GRANULARITIES  # ("model", "layer", "slice", "element")
COARSE_GRANULARITIES = tuple(g for g in GRANULARITIES if g != "element")
QUANTITIES = ("modification_frequency", "modification_ratio")
"""The diagnostics every granularity reports, as ``"<granularity>/<quantity>"``."""
ELEMENT_SHARES = ("pairwise_original", "all_agree")
"""The element-level shares reported besides, as ``"element/<share>"``."""

PyTree = Any


def element_statistics(grads: PyTree) -> dict[str, jax.Array]:
    """Element-granularity statistics of stacked per-domain gradients, in closed form.

    For one scalar piece, a projection removes all of ``g_i^k`` (``g_i^k - (g_i g_j /
    g_j^2) g_j = 0``), after which no later test conflicts. So under
    ``corgrad(granularity="element")`` (paper variant, any domain order) domain i's
    component k is modified exactly once if some other domain's sign is opposite, and
    never otherwise, each time with ratio 1. With ``P`` and ``M`` the numbers of domains
    with a positive and a negative component (zeros agree with nothing, conflict with
    nothing), per component:

    - modified tests ``P [M > 0] + M [P > 0]``, out of ``N (N - 1)`` tests: summed, the
      probe's ``modification_frequency`` (checked against the library in the tests; the
      generic engine needs about 1.6 s per step for MNIST_CNN on 2 CPU cores);
    - ordered pairs with a negative product of the ORIGINAL components, ``2 P M``: the
      pairwise-test share of eq. (3) (``pairwise_original``, 1/2 on random gradients);
    - all N signs agree, ``P = N`` or ``M = N``: ``all_agree``, the official
      fine-grained ``change_rate`` (``1/2^(N-1)`` on random gradients).

    Args:
      grads: per-domain gradients, every leaf stacked ``(N, *param.shape)``.

    Returns:
      ``frequency``, ``ratio`` (1, or 0 when nothing is modified), ``pairwise_original``
      and ``all_agree``, as scalars.
    """
    leaves = jax.tree_util.tree_leaves(grads)
    count = leaves[0].shape[0]
    modified = jnp.zeros((), jnp.float32)
    pairs = jnp.zeros((), jnp.float32)
    agree = jnp.zeros((), jnp.float32)
    size = 0
    for leaf in leaves:
        flat = leaf.reshape(count, -1)
        positive = (flat > 0).sum(0, dtype=jnp.float32)
        negative = (flat < 0).sum(0, dtype=jnp.float32)
        modified += (positive * (negative > 0) + negative * (positive > 0)).sum()
        pairs += (2 * positive * negative).sum()
        agree += ((positive == count) | (negative == count)).sum(dtype=jnp.float32)
        size += flat.shape[1]
    tests = size * count * (count - 1)
    return {
        "frequency": modified / tests,
        "ratio": jnp.where(modified > 0, 1.0, 0.0),
        "pairwise_original": pairs / tests,
        "all_agree": agree / size,
    }


@dataclasses.dataclass(frozen=True)
class GranularityProbe:
    """The diagnostics of every granularity, as a probe of the training loop
    (:class:`experiments.training.Hooks`).

    Its metrics are ``"<granularity>/modification_frequency"`` and
    ``"<granularity>/modification_ratio"`` for every granularity, plus
    ``"element/pairwise_original"`` and ``"element/all_agree"``
    (:func:`element_statistics`). Its state is that of the coarse probes.

    Attributes:
      num_slices: slices per layer of the ``slice`` probe (the paper's 10).
      seed: seeds the probes' random domain orders.
    """

    num_slices: int = 10
    seed: int = 0

    def transformations(self) -> dict[str, optax.GradientTransformation]:
        """``corgrad(granularity=g, alpha=None)`` of every coarse granularity g."""
        return {
            g: corgrad_jax.corgrad(self.num_slices, alpha=None, granularity=g, seed=self.seed)
            for g in COARSE_GRANULARITIES
        }

    def init(self, params: PyTree) -> dict[str, optax.OptState]:
        """The coarse probes' first states."""
        return {name: probe.init(params) for name, probe in self.transformations().items()}

    def __call__(
        self, grads: PyTree, params: PyTree, state: dict[str, optax.OptState]
    ) -> tuple[dict[str, optax.OptState], dict[str, jax.Array]]:
        """Feeds ``grads`` to every probe (their updates unused); returns the new states
        and every diagnostic."""
        new_states, metrics = {}, {}
        for name, probe in self.transformations().items():
            _, new_states[name] = probe.update(grads, state[name], params)
            for quantity in QUANTITIES:
                metrics[f"{name}/{quantity}"] = optax.tree_utils.tree_get(
                    new_states[name], quantity
                )
        element = element_statistics(grads)
        metrics["element/modification_frequency"] = element["frequency"]
        metrics["element/modification_ratio"] = element["ratio"]
        for share in ELEMENT_SHARES:
            metrics[f"element/{share}"] = element[share]
        return new_states, metrics


def random_reference(
    params: PyTree, num_domains: Sequence[int], *, seed: int = 0
) -> dict[int, dict[str, float]]:
    """Element-level statistics on i.i.d. Gaussian gradients shaped like ``params``.

    Args:
      params: the model's parameters (only their shapes matter).
      num_domains: the N to measure.
      seed: N's gradients are drawn from ``PRNGKey(seed + N)``.

    Returns:
      For each N: ``frequency`` (the element probe's modification frequency,
      ``(1 - 1/2^(N-1)) / (N - 1)``), ``pairwise_original`` (~1/2) and ``all_agree``
      (~1/2^(N-1)), as measured.
    """
    reference = {}
    for count in num_domains:
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(seed + count), len(leaves))
        grads = jax.tree_util.tree_unflatten(
            treedef,
            [
                jax.random.normal(k, (count, *leaf.shape), jnp.float32)
                for k, leaf in zip(keys, leaves, strict=True)
            ],
        )
        values = jax.jit(element_statistics)(grads)
        reference[int(count)] = {
            key: float(values[key]) for key in ("frequency", "pairwise_original", "all_agree")
        }
    return reference
