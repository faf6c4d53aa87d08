"""Figures 6 and 7: modification ratio and frequency of each granularity over training.

One model is trained (by the ``driver`` algorithm, CorGrad by default) with a small loop
built from the trainer's pieces (:mod:`experiments.data`, :mod:`experiments.models`,
:func:`experiments.trainer.create_train_state`, :func:`experiments.algorithms.build_optimizer`).
At every step the SAME stacked per-domain gradients are also fed to one *probe* per
granularity, ``corgrad(granularity=g, alpha=None)`` for g in model, layer, slice,
element, whose state holds that step's diagnostics (SPEC, "Diagnostics"):

- modification frequency: share of the (domain i, domain j, piece k) tests with a
  negative inner product (eq. 3);
- modification ratio: mean over the modified tests of ``||removed|| / ||g_i^k||``
  (the official code's ``change_percentage``).

The probes' updates are discarded, so all four granularities are measured on one
gradient trajectory, and differ only by how they cut it. The element granularity's
diagnostics are computed in closed form (:func:`element_statistics`, equal to the
library's ``corgrad(granularity="element")``, which the tests check), alongside two
other element-level shares (SPEC, "Other facts from the paper worth checking"):

- ``pairwise_original``: share of the ordered pairs (i, j) and components k whose
  ORIGINAL components have a negative product; 1/2 on random gradients, whatever N.
  (The probe's own frequency counts a test only while ``g_i^k`` is unprojected: once a
  scalar piece conflicts it is zeroed, so on random gradients it is
  ``(1 - 1/2^(N-1)) / (N - 1)``, not 1/2.)
- ``all_signs_agree``: share of components whose N domain signs all agree, what the
  official code logs as the fine-grained method's ``change_rate``; ``1/2^(N-1)`` on
  random gradients. :func:`random_reference` measures all three on random gradients.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import corgrad_jax
from experiments import data, trainer
from experiments.algorithms import build_optimizer
from experiments.hparams_registry import get_hparams
from experiments.models import get_model

GRANULARITIES = corgrad_jax.GRANULARITIES  # ("model", "layer", "slice", "element")
COARSE_GRANULARITIES = tuple(g for g in GRANULARITIES if g != "element")

PyTree = Any


@dataclasses.dataclass(frozen=True)
class GranularityTrace:
    """Per-step diagnostics of every granularity on one training trajectory.

    Attributes:
      dataset, test_envs: the data trained on (the training domains are the others).
      driver: the algorithm that produced the trajectory (its updates trained the model).
      num_domains: N, the number of training domains.
      batch_size: examples per domain and step.
      num_slices: slices per layer of the ``slice`` probe.
      num_parameters, num_layers: size of the model (leaves are layers).
      loss: ``(T,)`` mean training loss over the domains, per step.
      frequency: granularity -> ``(T,)`` modification frequency (pairwise tests).
      ratio: granularity -> ``(T,)`` modification ratio (0 at a step without conflicts).
      pairwise_original: ``(T,)`` share of the pairwise element tests whose ORIGINAL
        components have a negative product (before any projection).
      all_signs_agree: ``(T,)`` share of components whose N signs all agree
        (the official fine-grained ``change_rate``).
      seconds: wall time of the loop (compilation included).
    """

    dataset: str
    test_envs: tuple[int, ...]
    driver: str
    num_domains: int
    batch_size: int
    num_slices: int
    num_parameters: int
    num_layers: int
    loss: np.ndarray
    frequency: dict[str, np.ndarray]
    ratio: dict[str, np.ndarray]
    pairwise_original: np.ndarray
    all_signs_agree: np.ndarray
    seconds: float

    @property
    def steps(self) -> int:
        """The number of training steps T."""
        return len(self.loss)


@dataclasses.dataclass(frozen=True)
class BinnedTrace:
    """A :class:`GranularityTrace` averaged over bins of consecutive iterations.

    Attributes:
      edges: ``(start, stop)`` step range of each bin (stop exclusive).
      frequency: granularity -> mean frequency per bin.
      ratio: granularity -> mean ratio over the modified tests of the bin, i.e. the
        per-step ratios weighted by the per-step frequency (NaN if nothing was modified).
      pairwise_original: mean share of element tests negative on the original gradients.
      all_signs_agree: mean all-agree share per bin.
      loss: mean loss per bin.
    """

    edges: list[tuple[int, int]]
    frequency: dict[str, np.ndarray]
    ratio: dict[str, np.ndarray]
    pairwise_original: np.ndarray
    all_signs_agree: np.ndarray
    loss: np.ndarray


def _weighted_ratio(ratio: np.ndarray, frequency: np.ndarray) -> float:
    """Mean ratio over the modified tests: per-step ratios weighted by the number of
    modified tests, which is the frequency times a per-granularity constant."""
    total = float(frequency.sum())
    return float((ratio * frequency).sum() / total) if total > 0 else float("nan")


def bin_trace(trace: GranularityTrace, num_bins: int = 10) -> BinnedTrace:
    """Groups the steps into ``num_bins`` equal bins of iterations (as in the paper)."""
    num_bins = max(1, min(num_bins, trace.steps))
    chunks = np.array_split(np.arange(trace.steps), num_bins)
    edges = [(int(c[0]), int(c[-1]) + 1) for c in chunks]

    def mean(values: np.ndarray) -> np.ndarray:
        return np.array([values[c].mean() for c in chunks])

    return BinnedTrace(
        edges=edges,
        frequency={g: mean(f) for g, f in trace.frequency.items()},
        ratio={
            g: np.array([_weighted_ratio(trace.ratio[g][c], trace.frequency[g][c]) for c in chunks])
            for g in trace.ratio
        },
        pairwise_original=mean(trace.pairwise_original),
        all_signs_agree=mean(trace.all_signs_agree),
        loss=mean(trace.loss),
    )


def overall_ratio(trace: GranularityTrace, granularity: str) -> float:
    """The modification ratio over every modified test of the whole run."""
    return _weighted_ratio(trace.ratio[granularity], trace.frequency[granularity])


def _probes(num_slices: int, seed: int) -> dict[str, optax.GradientTransformation]:
    """The library's probes of the coarse granularities (element: :func:`element_statistics`)."""
    return {
        g: corgrad_jax.corgrad(num_slices, alpha=None, granularity=g, seed=seed)
        for g in COARSE_GRANULARITIES
    }


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
      generic engine needs about 1.6 s per step for this model on 2 CPU cores);
    - ordered pairs with a negative product of the ORIGINAL components, ``2 P M``: the
      pairwise-test share the SPEC describes (``pairwise_original``, 1/2 on random
      gradients);
    - all N signs agree, ``P = N`` or ``M = N``: ``all_agree``, the official
      fine-grained ``change_rate`` (``1/2^(N-1)`` on random gradients).

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


def _probe_diagnostics(
    probes: Mapping[str, optax.GradientTransformation],
    states: Mapping[str, optax.OptState],
    grads: PyTree,
    params: PyTree,
) -> tuple[dict[str, optax.OptState], dict[str, jax.Array]]:
    """Feeds ``grads`` to every probe; returns the new states and every diagnostic."""
    new_states, metrics = {}, {}
    for name, probe in probes.items():
        _, new_states[name] = probe.update(grads, states[name], params)  # update unused
        for quantity in ("modification_frequency", "modification_ratio"):
            metrics[f"{name}/{quantity}"] = optax.tree_utils.tree_get(new_states[name], quantity)
    element = element_statistics(grads)
    metrics["element/modification_frequency"] = element["frequency"]
    metrics["element/modification_ratio"] = element["ratio"]
    metrics["element/pairwise_original"] = element["pairwise_original"]
    metrics["element/all_agree"] = element["all_agree"]
    return new_states, metrics


def random_reference(
    params: PyTree, num_domains: Sequence[int], *, seed: int = 0
) -> dict[int, dict[str, float]]:
    """Element-level statistics on i.i.d. Gaussian gradients shaped like ``params``.

    Returns, for each N: ``frequency`` (the element probe's modification frequency,
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


def trace_granularities(
    *,
    dataset: str = "RotatedMNIST",
    test_envs: tuple[int, ...] = (0,),
    driver: str = "corgrad",
    steps: int = 300,
    batch_size: int = 32,
    num_slices: int = 10,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> GranularityTrace:
    """Trains ``driver`` for ``steps`` steps and probes every granularity at each step.

    Args:
      dataset: a dataset the trainer takes (the embedded ones need no ``data_dir``).
      test_envs: held-out environments; the others are the N training domains.
      driver: the algorithm whose updates train the model
        (:data:`experiments.algorithms.ALGORITHMS`), with its default hparams.
      steps: training steps.
      batch_size: examples per domain and step.
      num_slices: slices per layer for the ``slice`` probe (the paper's 10).
      seed: seeds initialization, minibatches and the probes' domain orders.
      log: progress lines.
    """
    start = time.perf_counter()
    hparams = get_hparams(
        driver, dataset, hparams_seed=0, trial_seed=0, overrides={"batch_size": batch_size}
    )
    splits = _splits(dataset, test_envs, batch_size=batch_size, seed=seed)
    model = get_model(tuple(splits.input_shape), splits.num_classes, hparams)
    tx = build_optimizer(driver, hparams, seed=seed, total_steps=steps)
    init_key, dropout_root = jax.random.split(jax.random.PRNGKey(seed))
    state = trainer.create_train_state(init_key, model, tx, tuple(splits.input_shape))
    probes = _probes(num_slices, seed)
    probe_states = {name: probe.init(state.params) for name, probe in probes.items()}

    @jax.jit
    def step(
        state: trainer.TrainState,
        probe_states: dict[str, optax.OptState],
        batch: dict[str, jax.Array],
        dropout_key: jax.Array,
    ) -> tuple[trainer.TrainState, dict[str, optax.OptState], dict[str, jax.Array]]:
        losses, grads = trainer.domain_gradients(state, batch, dropout_key)
        probe_states, metrics = _probe_diagnostics(probes, probe_states, grads, state.params)
        state = state.apply_gradients(grads=grads)
        return state, probe_states, {"loss": losses.mean(), **metrics}

    history: list[dict[str, jax.Array]] = []
    report_every = max(1, steps // 5)
    for index in range(steps):
        batch = splits.train_batch(index)
        state, probe_states, metrics = step(
            state, probe_states, batch, jax.random.fold_in(dropout_root, index)
        )
        history.append(metrics)
        if (index + 1) % report_every == 0 or index + 1 == steps:
            jax.block_until_ready(metrics)
            log(
                f"  granularity probes: step {index + 1}/{steps}, loss "
                f"{float(metrics['loss']):.3f}, {time.perf_counter() - start:.0f} s"
            )
    values = jax.device_get(history)
    column = lambda key: np.array([float(m[key]) for m in values])  # noqa: E731
    leaves = jax.tree_util.tree_leaves(state.params)
    return GranularityTrace(
        dataset=dataset,
        test_envs=tuple(test_envs),
        driver=driver,
        num_domains=len(splits.train_envs),
        batch_size=batch_size,
        num_slices=num_slices,
        num_parameters=int(sum(leaf.size for leaf in leaves)),
        num_layers=len(leaves),
        loss=column("loss"),
        frequency={g: column(f"{g}/modification_frequency") for g in GRANULARITIES},
        ratio={g: column(f"{g}/modification_ratio") for g in GRANULARITIES},
        pairwise_original=column("element/pairwise_original"),
        all_signs_agree=column("element/all_agree"),
        seconds=time.perf_counter() - start,
    )


def _splits(dataset: str, test_envs: Sequence[int], *, batch_size: int, seed: int) -> Any:
    """The trainer's dataset with DomainBed's default split (trial 0, 20% held out)."""
    return data.get_dataset(dataset, None, test_envs=tuple(test_envs), holdout_fraction=0.2,
                            trial_seed=0, batch_size=batch_size, seed=seed)


def model_params(dataset: str, test_envs: tuple[int, ...]) -> PyTree:
    """Freshly initialized parameters of the trainer's model for ``dataset``."""
    splits = _splits(dataset, test_envs, batch_size=1, seed=0)
    model = get_model(tuple(splits.input_shape), splits.num_classes, {})
    return trainer.init_variables(model, tuple(splits.input_shape), jax.random.PRNGKey(0))["params"]


_COLORS = {"model": "tab:blue", "layer": "tab:orange", "slice": "tab:green", "element": "tab:red"}


def plot_granularities(
    trace: GranularityTrace,
    binned: BinnedTrace,
    reference: Mapping[int, Mapping[str, float]],
    output_dir: Path,
) -> list[Path]:
    """Writes ``fig6_modification_ratio.png`` and ``fig7_modification_frequency.png``."""
    from matplotlib.figure import Figure

    centers = np.array([(a + b - 1) / 2 for a, b in binned.edges])
    labels = [f"{a}-{b - 1}" for a, b in binned.edges]
    subtitle = (
        f"{trace.dataset}, test env(s) {list(trace.test_envs)}, "
        f"N = {trace.num_domains} training domains, driver: {trace.driver}"
    )

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    ax = figure.subplots()
    for g in GRANULARITIES:
        ax.plot(centers, binned.ratio[g], "o-", color=_COLORS[g], label=g)
    ax.set_xticks(centers, labels, rotation=30, fontsize=8)
    ax.set_xlabel("iterations (10 bins)")
    ax.set_ylabel("modification ratio ||removed|| / ||g||")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Figure 6: modification ratio by granularity\n{subtitle}", fontsize=10)
    ax.legend()
    ratio_path = output_dir / "fig6_modification_ratio.png"
    figure.savefig(ratio_path, dpi=110)

    count = trace.num_domains
    figure = Figure(figsize=(12, 5), layout="constrained")
    ax = figure.subplots()
    for g in GRANULARITIES:
        ax.plot(
            centers,
            binned.frequency[g],
            "o-",
            color=_COLORS[g],
            label=f"{g}: modification frequency (probe)",
        )
    ax.plot(
        centers,
        binned.pairwise_original,
        "^--",
        color="tab:brown",
        label="element: share of pairwise tests negative on the original gradients",
    )
    ax.plot(
        centers,
        binned.all_signs_agree,
        "s--",
        color="tab:purple",
        label="element: share with all N signs agreeing (official change_rate)",
    )
    ax.axhline(
        1 / 2 ** (count - 1),
        color="tab:purple",
        lw=0.8,
        ls=":",
        label=f"1/2^(N-1) = {1 / 2 ** (count - 1):.4f}",
    )
    ax.axhline(
        1 / (2 * count - 1),
        color="grey",
        lw=0.8,
        ls="-.",
        label=f"1/(2N-1) = {1 / (2 * count - 1):.4f} (as printed in the paper)",
    )
    if count in reference:
        ax.axhline(
            reference[count]["frequency"],
            color="tab:red",
            lw=0.8,
            ls=":",
            label=f"element probe on random gradients = {reference[count]['frequency']:.3f}",
        )
    ax.set_xticks(centers, labels, rotation=30, fontsize=8)
    ax.set_xlabel("iterations (10 bins)")
    ax.set_ylabel("modification frequency")
    highest = max(float(np.nanmax(binned.frequency[g])) for g in GRANULARITIES)
    highest = max(
        highest,
        float(np.nanmax(binned.pairwise_original)),
        float(np.nanmax(binned.all_signs_agree)),
    )
    ax.set_ylim(0, min(1.0, 1.15 * highest + 0.02))
    ax.set_title(f"Figure 7: modification frequency by granularity\n{subtitle}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    frequency_path = output_dir / "fig7_modification_frequency.png"
    figure.savefig(frequency_path, dpi=110)
    return [ratio_path, frequency_path]


def summary(trace: GranularityTrace, binned: BinnedTrace) -> dict[str, Any]:
    """The numbers of Figures 6 and 7, for JSON."""
    return {
        "dataset": trace.dataset,
        "test_envs": list(trace.test_envs),
        "driver": trace.driver,
        "num_domains": trace.num_domains,
        "batch_size": trace.batch_size,
        "num_slices": trace.num_slices,
        "num_parameters": trace.num_parameters,
        "num_layers": trace.num_layers,
        "steps": trace.steps,
        "seconds": trace.seconds,
        "bins": [list(edge) for edge in binned.edges],
        "frequency": {g: _finite_list(v) for g, v in binned.frequency.items()},
        "ratio": {g: _finite_list(v) for g, v in binned.ratio.items()},
        "pairwise_original": _finite_list(binned.pairwise_original),
        "all_signs_agree": _finite_list(binned.all_signs_agree),
        "loss": _finite_list(binned.loss),
        "first_step": {
            "element_frequency": float(trace.frequency["element"][0]),
            "pairwise_original": float(trace.pairwise_original[0]),
            "all_signs_agree": float(trace.all_signs_agree[0]),
        },
    }


def _finite_list(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values]
