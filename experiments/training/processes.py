"""The processes of a job and what they dispatch: :mod:`jax.distributed`, the one writer,
barriers, and a bounded queue of programs.

On several hosts every process runs the same command: :func:`initialize_distributed`
joins them, only process 0 writes logs and results (:func:`is_writer`), and
:func:`sync` waits for all at the points where files change. :func:`in_flight` keeps
the host at most :data:`PROGRAMS_IN_FLIGHT` programs ahead of the devices.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import jax

T = TypeVar("T")

DISTRIBUTED_MODES = ("auto", "on", "off")
DISTRIBUTED_ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES")
"""Variables whose presence makes ``--distributed auto`` start :mod:`jax.distributed`."""

PROGRAMS_IN_FLIGHT = 2
"""The most jitted programs the trainer dispatches ahead of the host (:func:`in_flight`).

JAX dispatches asynchronously: a call returns before its program runs. A loop that
never waits queues one program per iteration, and programs with collectives (every
step on a mesh of several devices: an all-reduce of the gradients, of the correct
counts) must not queue without bound. XLA's CPU client admits at most 32 programs per
device; once a device's slots are held by programs that wait for the collectives of a
program that device has not yet launched, the devices wait for each other forever
("Expected 4 threads to join the rendezvous, but only 3 of them arrived"). An
evaluation of RotatedMNIST (about 90 batches) dispatched without waiting did this in
most runs on 4 virtual devices. Keeping the host at most this many programs ahead
bounds the queue on every backend, and still overlaps the host's work (reading the
next batch) with the device's."""


def initialize_distributed(mode: str = "auto") -> bool:
    """Starts JAX's multi-process runtime; returns whether it did.

    Args:
        mode: ``"on"`` calls :func:`jax.distributed.initialize`, which finds the
            coordinator, the process count and this process's index by itself on Cloud
            TPU pod slices, SLURM and Open MPI, and otherwise from
            ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), with
            ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (passed on explicitly here).
            ``"auto"`` does so only when one of :data:`DISTRIBUTED_ENVIRONMENT` is set;
            ``"off"`` never.

    Must run before anything else touches a JAX backend.

    Raises:
        ValueError: a malformed variable, or JAX could not start (no cluster found, a
            backend already running); the message says which.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"distributed mode must be one of {DISTRIBUTED_MODES}, got {mode!r}")
    if mode == "off" or (mode == "auto" and not any(map(os.environ.get, DISTRIBUTED_ENVIRONMENT))):
        return False
    if jax.distributed.is_initialized():
        return True
    explicit = {}
    for name, variable in (
        ("num_processes", "JAX_NUM_PROCESSES"),
        ("process_id", "JAX_PROCESS_ID"),
    ):
        value = os.environ.get(variable)
        if value:
            if not value.isdigit():
                raise ValueError(f"{variable}={value!r} is not a non-negative integer")
            explicit[name] = int(value)
    try:
        jax.distributed.initialize(**explicit)
    except (ValueError, RuntimeError) as error:  # no cluster found, backend already up
        raise ValueError(f"jax.distributed.initialize() failed: {error}") from None
    return True


def in_flight(dispatched: Iterable[T], depth: int = PROGRAMS_IN_FLIGHT - 1) -> Iterator[T]:
    """The items of ``dispatched`` in order, each yielded once ``depth`` newer ones exist.

    ``dispatched`` launches a jitted program per item (lazily, as it is iterated); the
    caller waits for each yielded item (``int(x)``, ``jax.block_until_ready``) before
    asking for the next, so at most ``depth + 1`` programs are in flight
    (:data:`PROGRAMS_IN_FLIGHT`).

    Example:
      >>> list(in_flight(iter([1, 2, 3]), depth=1))
      [1, 2, 3]
    """
    pending: collections.deque[T] = collections.deque()
    for item in dispatched:
        pending.append(item)
        if len(pending) > depth:
            yield pending.popleft()
    yield from pending


def is_writer() -> bool:
    """Whether this process writes logs, results and markers (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
