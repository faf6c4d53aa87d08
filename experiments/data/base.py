"""The contract every dataset of the trainer fulfils.

A dataset is a list of environments (domains). The trainer asks for one minibatch per
training environment at every step, stacked on a leading domain axis, and for
evaluation batches of every environment's ``in`` and ``out`` splits (DomainBed's
names: ``out`` is the held-out ``holdout_fraction`` of the environment, ``in`` the rest).

A dataset may leave part of the work to the accelerator: its ``stored_train_batch`` and
``stored_eval_batches`` then give what the host reads (uint8 images), and its
``device_transform`` turns those, on the device, into the model inputs that
``train_batch`` and ``eval_batches`` give. Otherwise ``device_transform`` is None and
the stored batches are the model inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol

import numpy as np

Batch = dict[str, np.ndarray]
"""``{"x": float32 images (..., H, W, C), "y": int32 labels (...)}``."""

Split = Literal["in", "out"]


class DeviceTransform(Protocol):
    """How the device turns stored batches into model inputs (a jitted function of
    arrays, so the batches may live on a mesh)."""

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        """One stored example's shape (its dtype is uint8)."""
        ...

    def train(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        """A whole training step's stored batch -> ``{"x": model inputs, "y": ...}``;
        a pure function of (seed, step) and the batch."""
        ...

    def eval(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A stored evaluation batch -> the same batch with ``x`` the model inputs."""
        ...


class EnvironmentSplits(Protocol):
    """A dataset split into environments, each into an ``in`` and an ``out`` part."""

    name: str
    environments: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, int, int]  # (H, W, C)
    train_envs: tuple[int, ...]  # every environment not in test_envs, ascending
    device_transform: DeviceTransform | None  # None: stored batches are model inputs

    def split_size(self, env: int, split: Split) -> int:
        """The number of examples in environment ``env``'s ``split``."""
        ...

    def train_batch(
        self, step: int, domains: slice = slice(None), examples: slice = slice(None)
    ) -> Batch:
        """The minibatches of step ``step``: x ``(D, B, H, W, C)``, y ``(D, B)``.

        D = len(train_envs). Drawn from each training environment's ``in`` split with
        infinite per-environment shuffling; a pure function of (seed, step), so a run
        resumed at step t sees exactly the batches an uninterrupted run sees.

        ``domains`` and ``examples`` select rows ``[domains, examples]`` of that batch
        and only those are loaded: on several hosts, each process loads the rows its
        own devices hold (:meth:`experiments.training.parallel.ShardingPlan.global_batch`).
        """
        ...

    def eval_batches(
        self, env: int, split: Split, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Batch]:
        """Every example of environment ``env``'s ``split`` once, in fixed order.

        ``start`` and ``stop`` restrict it to positions ``[start, stop)`` of the split
        (each process of a multi-host evaluation reads its own share).
        """
        ...

    def stored_train_batch(
        self, step: int, domains: slice = slice(None), examples: slice = slice(None)
    ) -> Batch:
        """:meth:`train_batch` as the host reads it, before ``device_transform``."""
        ...

    def stored_eval_batches(
        self, env: int, split: Split, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Batch]:
        """:meth:`eval_batches` as the host reads them, before ``device_transform``."""
        ...
