"""Accuracy on every environment's ``in`` and ``out`` split, on one device or a mesh of
several processes.

Every process evaluates an equal share of every split, padded to whole batches and
masked, so every example counts once; the eval step of every batch is dispatched with at
most :data:`~experiments.training.processes.PROGRAMS_IN_FLIGHT` programs queued
(:func:`~experiments.training.processes.in_flight`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from experiments.data import EnvironmentSplits
from experiments.training.parallel import ShardingPlan
from experiments.training.processes import in_flight
from experiments.training.steps import TrainState, jitted_eval_step

EVAL_BATCH_SIZE = 64
"""Evaluation examples per device and program: the fastest per example for MNIST_CNN on a
2-core CPU."""


def evaluate(
    state: TrainState,
    dataset: EnvironmentSplits,
    *,
    max_examples: int | None = None,
    plan: ShardingPlan | None = None,
) -> dict[str, float]:
    """Accuracy on every environment's ``in`` and ``out`` split: ``env{i}_{split}_acc``.

    On a ``plan``, every batch is split over all devices, and on several processes each
    reads an equal share of the split (padded and masked), so every example counts once.
    """
    state = state.replace(tx=None, opt_state=None)  # one compilation for every algorithm
    batch_size = min(EVAL_BATCH_SIZE, max_examples or EVAL_BATCH_SIZE)
    place: Callable[[dict[str, np.ndarray]], Any] = lambda batch: batch  # noqa: E731
    processes, process = 1, 0
    if plan is not None:
        batch_size = plan.eval_batch_size(batch_size)
        place = plan.global_eval_batch
        processes, process = jax.process_count(), jax.process_index()
    local_size = batch_size // processes
    transform = dataset.device_transform  # None: the host reads model inputs
    stored_shape, stored_dtype = dataset.input_shape, np.float32
    if transform is not None:
        stored_shape, stored_dtype = transform.stored_shape, np.uint8
    totals: dict[str, int] = {}

    def correct_counts() -> Iterator[tuple[str, jax.Array]]:
        """Dispatches the eval step of every batch, lazily: (key, correct count)."""
        for env in range(len(dataset.environments)):
            for split in ("in", "out"):
                key = f"env{env}_{split}_acc"
                total = dataset.split_size(env, split)
                if max_examples is not None:
                    total = min(total, max_examples)
                totals[key] = total
                share = -(-total // processes)
                start, stop = min(total, process * share), min(total, (process + 1) * share)
                batches = dataset.stored_eval_batches(env, split, local_size, start, stop)
                for _ in range(-(-share // local_size)):
                    batch = next(batches, None)  # None: this process's share is exhausted
                    size = 0 if batch is None else min(len(batch["y"]), stop - start)
                    padded = {
                        "x": np.zeros((local_size, *stored_shape), stored_dtype),
                        "y": np.zeros(local_size, np.int32),
                        "mask": np.arange(local_size) < size,
                    }
                    if size:
                        padded["x"][:size] = batch["x"][:size]
                        padded["y"][:size] = batch["y"][:size]
                    inputs = place(padded)
                    if transform is not None:  # resized and normalised on the device
                        inputs = transform.eval(inputs)
                    yield key, jitted_eval_step(state, inputs)
                    start += size

    corrects: dict[str, int] = collections.defaultdict(int)
    for key, count in in_flight(correct_counts()):  # a bounded queue of programs
        corrects[key] += int(count)
    return {
        key: float(corrects[key] / total) if total else float("nan")
        for key, total in totals.items()
    }
