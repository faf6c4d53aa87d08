"""Figures 6 and 7: modification ratio and frequency of each granularity over training.

One model is trained by the project's one training loop
(:func:`experiments.training.run`) on a :class:`~experiments.training.TrainConfig` (the
``driver`` algorithm, CorGrad by default, with its default hparams); at every step its
stacked per-domain gradients also go to a :class:`~experiments.analysis.
granularity_probe.GranularityProbe`, whose diagnostics of every granularity reach the
loop's ``after_step`` hook and make the :class:`GranularityTrace`. The paper plots them
averaged over bins of iterations (:func:`bin_trace`); the figures are drawn by
:mod:`experiments.analysis.granularity_plot`.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments import models
from experiments import run_dir as files
from experiments.analysis.granularity_probe import GRANULARITIES, GranularityProbe
from experiments.cli import ConfigError
from experiments.training import Hooks, TrainConfig, run
from experiments.training.steps import init_variables

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
      seconds: wall time of the run (compilation and its two evaluations included).
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


def model_params(config: TrainConfig) -> PyTree:
    """Freshly initialized parameters of ``config``'s model (``PRNGKey(0)``)."""
    spec = config.dataset_spec()
    model = models.get_model(config.model_name(), spec.num_classes, {})
    return init_variables(model, tuple(spec.input_shape), jax.random.PRNGKey(0))["params"]


def _fresh_run_dir(path: Path) -> None:
    """Removes the run directory ``path`` left by an earlier analysis (a resumed run
    would skip the steps it finished, and the trace needs them all). Anything else
    there is left for :func:`experiments.training.run` to refuse."""
    if (path / files.ARGS).exists() or (path.is_dir() and not any(path.iterdir())):
        shutil.rmtree(path)


def trace_granularities(
    config: TrainConfig,
    *,
    num_slices: int = 10,
    log: Callable[[str], None] = print,
) -> GranularityTrace:
    """Trains ``config``'s run from scratch and probes every granularity at each step.

    Args:
      config: the run: its ``algorithm`` drives the trajectory, its ``seed`` seeds
        initialization, minibatches, dropout and the probes' domain orders. Its
        ``output_dir`` is emptied first: the trace needs every step.
      num_slices: slices per layer for the ``slice`` probe (the paper's 10).
      log: progress lines.

    Raises:
      ConfigError: invalid ``config``, or an ``output_dir`` holding something else.
    """
    start = time.perf_counter()
    config = config.resolved()
    assert config.steps is not None
    batch_size = int(config.run_hparams()["batch_size"])
    _fresh_run_dir(Path(config.output_dir))
    history: list[Mapping[str, jax.Array]] = []
    report_every = max(1, config.steps // 5)

    def after_step(step: int, metrics: Mapping[str, jax.Array] | None) -> None:
        if metrics is None:  # a step a resumed run skipped
            raise ConfigError(f"{config.output_dir}: the granularity run resumed; the trace "
                              "needs every step")
        history.append(metrics)
        if (step + 1) % report_every == 0 or step + 1 == config.steps:
            log(
                f"  granularity probes: step {step + 1}/{config.steps}, loss "
                f"{float(metrics['loss']):.3f}, {time.perf_counter() - start:.0f} s"
            )

    probe = GranularityProbe(num_slices=num_slices, seed=config.seed)
    run(config, hooks=Hooks(after_step=after_step, probe=probe), log=lambda line: log(f"  {line}"))
    values = jax.device_get(history)
    column = lambda key: np.array([float(m[key]) for m in values])  # noqa: E731
    leaves = jax.tree_util.tree_leaves(model_params(config))
    return GranularityTrace(
        dataset=config.dataset,
        test_envs=tuple(config.test_envs),
        driver=config.algorithm,
        num_domains=len(config.dataset_spec().train_envs(config.test_envs)),
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
