"""Data- and domain-parallel training on a :class:`jax.sharding.Mesh`, on one host or many.

The trainer's arrays live on a two-axis mesh of all (or the first ``num_devices``)
devices::

    mesh axes    ("domain", "data")      shape (domain_parallel, num_devices // domain_parallel)

    batch        x (D, B, H, W, C), y (D, B)   P("domain", "data")
    stacked      computed per domain group: (D, *param.shape)  P("domain");
    gradients    read by the algorithm as (D, m, rest)  P(None, ("domain", "data")):
                 contiguous ranges of every flattened leaf on every device
                 (corgrad_jax.partitioned; leaves with no such split stay whole)
    train state  params, Adam moments, frozen BatchNorm statistics
                 param_sharding="replicated": P()  (every device holds all)
                 param_sharding="fsdp": the largest dimension divisible by the data axis
                 is split over "data" (leaves below ``FSDP_MIN_SIZE`` elements stay
                 replicated)
    evaluation   x (N, H, W, C): P(("domain", "data"))

Everything runs under one ``jax.jit``; XLA's SPMD partitioner inserts the collectives.
``domain_parallel = K > 1`` splits the D training domains into K groups of D/K: each
group of devices computes the forward and backward passes of its own domains only
(:meth:`ShardingPlan.map_domains`). The algorithm then reads every stacked leaf split
into contiguous ranges over all devices, so its Gram pass adds partial ``(pieces, D,
D)`` arrays across devices and its output pass writes each range where it lies: the
stacked gradients (D times the model) are never gathered on a device; only the
param-sized update is, for replicated params.

The results do not depend on the mesh: a run on 8 devices gives the metrics of the same
run on 1 device up to float rounding (``tests/experiments/test_parallel.py``), and its
checkpoints restore onto any other device count (orbax reshards on restore).

Several hosts (a TPU pod slice, a multi-node GPU job): every process runs the same
command (:mod:`experiments.training.processes` starts :mod:`jax.distributed` and names
the writer), and each process loads only the rows of the batch that its own devices hold
(:meth:`ShardingPlan.global_batch`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import corgrad_jax
from experiments.training import processes

DOMAIN_AXIS = "domain"
DATA_AXIS = "data"
MESH_AXES = (DOMAIN_AXIS, DATA_AXIS)
PARAM_SHARDINGS = ("replicated", "fsdp")
FSDP_MIN_SIZE = 2**14
"""Under ``fsdp``, leaves with fewer elements stay replicated (biases, norms, counters)."""

PyTree = Any
Batch = dict[str, np.ndarray]
class PlanError(ValueError):
    """A mesh that does not fit the devices or the batch (the message says why)."""


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """Where every array of a training step lives: a mesh and the rules above.

    Hashable, so it can be a static argument of a jitted step.

    Attributes:
        mesh: a mesh with axes ``("domain", "data")``.
        param_sharding: ``"replicated"`` or ``"fsdp"``.
    """

    mesh: Mesh
    param_sharding: str = "replicated"

    @property
    def domain_size(self) -> int:
        """Devices along the domain axis: the number of domain groups."""
        return int(self.mesh.shape[DOMAIN_AXIS])

    @property
    def data_size(self) -> int:
        """Devices along the data axis: the data-parallel width of each domain group."""
        return int(self.mesh.shape[DATA_AXIS])

    @property
    def num_devices(self) -> int:
        """All devices of the mesh."""
        return self.domain_size * self.data_size

    # -- partition specs --

    def param_spec(self, shape: Sequence[int]) -> P:
        """The spec of a train-state leaf (param, optimizer moment, statistic)."""
        if self.param_sharding == "replicated" or self.data_size == 1:
            return P()
        if math.prod(shape) < FSDP_MIN_SIZE:
            return P()
        candidates = [axis for axis, size in enumerate(shape) if size % self.data_size == 0]
        if not candidates:
            return P()
        axis = max(candidates, key=lambda a: (shape[a], a))  # largest, then innermost
        return P(*(DATA_AXIS if a == axis else None for a in range(len(shape))))

    def gradient_layout(
        self, shape: Sequence[int], *, keep_leading_axis: bool = False
    ) -> tuple[tuple[int, ...], P]:
        """The shape and spec in which the algorithm reads a stacked leaf ``(D, ...)``
        (:func:`corgrad_jax.partitioned` over all devices)."""
        split = corgrad_jax.contiguous_split(
            shape[1:], self.num_devices, keep_leading_axis=keep_leading_axis
        )
        if split is None or self.num_devices == 1:
            return tuple(shape), P()
        return (shape[0], *split), P(None, MESH_AXES)

    def sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    @property
    def batch_sharding(self) -> NamedSharding:
        """Training batches ``(D, B, ...)``: domains over "domain", examples over "data"."""
        return self.sharding(P(DOMAIN_AXIS, DATA_AXIS))

    @property
    def eval_sharding(self) -> NamedSharding:
        """Evaluation batches ``(N, ...)``: examples over every device."""
        return self.sharding(P((DOMAIN_AXIS, DATA_AXIS)))

    def state_shardings(self, state: PyTree) -> PyTree:
        """A pytree of :class:`NamedSharding`, one per array leaf of ``state``."""
        return jax.tree.map(lambda leaf: self.sharding(self.param_spec(np.shape(leaf))), state)

    # -- inside a jitted step --

    def constrain_state(self, state: PyTree) -> PyTree:
        """Pins a train state (or any pytree of its leaves) to :meth:`param_spec`."""
        return jax.lax.with_sharding_constraint(state, self.state_shardings(state))

    def map_domains(
        self, gradients: Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]]
    ) -> Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]]:
        """``gradients(params, stacked_batch)`` run by each domain group on its own domains.

        With one domain group, ``gradients`` itself. Otherwise a :func:`jax.shard_map`
        manual over the domain axis only: group k receives domains ``[k D/K, (k+1) D/K)``
        of the batch (and every param), returns their losses and stacked gradients,
        and the results stay split over the domain axis; inside a group, the data axis
        is left to XLA (data parallelism, or fsdp params).
        """
        if self.domain_size == 1:
            return gradients
        return jax.shard_map(
            gradients,
            mesh=self.mesh,
            in_specs=(P(), P(DOMAIN_AXIS)),
            out_specs=P(DOMAIN_AXIS),
            axis_names=frozenset({DOMAIN_AXIS}),
            check_vma=False,
        )

    # -- placing data --

    def put_state(self, state: PyTree) -> PyTree:
        """``state`` placed on the mesh (from host or device arrays, on one process)."""
        return jax.device_put(state, self.state_shardings(state))

    def local_rows(self, num_domains: int, batch_size: int) -> tuple[slice, slice]:
        """The ``(domains, examples)`` rows of a ``(D, B)`` batch this process's devices hold."""
        indices = self.batch_sharding.addressable_devices_indices_map((num_domains, batch_size))
        bounds = []
        for axis, size in enumerate((num_domains, batch_size)):
            ranges = [index[axis].indices(size)[:2] for index in indices.values()]
            bounds.append(slice(min(r[0] for r in ranges), max(r[1] for r in ranges)))
        return bounds[0], bounds[1]

    def global_batch(
        self,
        load: Callable[[slice, slice], Batch],
        num_domains: int,
        batch_size: int,
    ) -> dict[str, jax.Array]:
        """A training batch as global arrays, each process loading its own rows only.

        Args:
            load: ``load(domains, examples)`` returns the batch's rows
                ``x[domains, examples]``, ``y[domains, examples]`` as NumPy arrays.
            num_domains: D, the training domains.
            batch_size: B, examples per domain.
        """
        domains, examples = self.local_rows(num_domains, batch_size)
        local = load(domains, examples)
        return {
            name: jax.make_array_from_process_local_data(
                self.batch_sharding, value, (num_domains, batch_size, *value.shape[2:])
            )
            for name, value in local.items()
        }

    def eval_batch_size(self, per_device: int) -> int:
        """The global evaluation batch: ``per_device`` examples on every device."""
        return per_device * self.num_devices

    def global_eval_batch(self, local: Batch) -> dict[str, jax.Array]:
        """An evaluation batch from every process's equal-sized share, stacked in order."""
        return {
            name: jax.make_array_from_process_local_data(self.eval_sharding, value)
            for name, value in local.items()
        }

    # -- the dry run --

    def describe(self, arrays: dict[str, PyTree]) -> Iterator[str]:
        """Lines of the plan: the mesh, then each leaf's shape, spec and bytes per device.

        Args:
            arrays: named pytrees of :class:`jax.ShapeDtypeStruct` (or arrays) with
                their shardings, e.g. ``{"state": ..., "batch": ..., "gradients": ...}``.
        """
        axes = ", ".join(f"{name}={size}" for name, size in self.mesh.shape.items())
        kinds = sorted({device.device_kind for device in self.mesh.devices.flat})
        yield (
            f"mesh: {self.num_devices} devices ({', '.join(kinds)}), axes ({axes}); "
            f"param_sharding={self.param_sharding}; {jax.process_count()} process(es)"
        )
        totals = {}
        for group, tree in arrays.items():
            yield f"{group}:"
            total = 0
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                sharding = leaf.sharding
                shard = sharding.shard_shape(leaf.shape)
                per_device = math.prod(shard) * np.dtype(leaf.dtype).itemsize
                total += per_device
                spec = sharding.spec if isinstance(sharding, NamedSharding) else P()
                yield (
                    f"  {jax.tree_util.keystr(path):<58} {str(tuple(leaf.shape)):<22} "
                    f"{str(np.dtype(leaf.dtype)):<8} {str(spec):<34} {format_bytes(per_device):>10}"
                )
            totals[group] = total
            yield f"  {'total per device':<58} {'':<22} {'':<8} {'':<34} {format_bytes(total):>10}"
        yield "bytes per device: " + ", ".join(
            f"{group} {format_bytes(total)}" for group, total in totals.items()
        ) + f"; all {format_bytes(sum(totals.values()))}"


@dataclasses.dataclass(frozen=True)
class DeviceLayout:
    """Where a run's arrays live: what the trainer's device flags set.

    It does not change a run's results (up to float rounding), so it is not part of a
    run's arguments and may differ when a run resumes.

    Attributes:
        num_devices: use the first N devices (None: all of them).
        domain_parallel: devices along the mesh's domain axis; divides the number of
            training domains and the device count.
        param_sharding: ``replicated`` (every device holds the train state) or ``fsdp``
            (large leaves split over the data axis).
        distributed: ``auto``, ``on`` or ``off``: whether to start
            :mod:`jax.distributed` (:func:`initialize_distributed`).
    """

    num_devices: int | None = dataclasses.field(
        default=None, metadata={"help": "use the first N devices (default: all that divide "
                                        "the batch)"})
    domain_parallel: int = dataclasses.field(
        default=1, metadata={"help": "devices along the domain axis"})
    param_sharding: str = dataclasses.field(
        default="replicated", metadata={"help": ", ".join(PARAM_SHARDINGS)})
    distributed: str = dataclasses.field(
        default="auto", metadata={"help": "start jax.distributed: auto (if "
                                          "JAX_COORDINATOR_ADDRESS or JAX_NUM_PROCESSES is "
                                          "set), on (TPU pods, SLURM, Open MPI), off"})

    def check(self) -> None:
        """Raises :class:`PlanError` for a value no machine could take."""
        _check_param_sharding(self.param_sharding)
        if self.distributed not in processes.DISTRIBUTED_MODES:
            raise PlanError(
                f"unknown distributed mode {self.distributed!r}; expected one of "
                f"{', '.join(processes.DISTRIBUTED_MODES)}"
            )
        for name in ("num_devices", "domain_parallel"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PlanError(f"{name} must be at least 1, got {value}")

    def plan(self, num_domains: int, batch_size: int) -> ShardingPlan:
        """This layout's :func:`make_plan` for batches of ``num_domains`` x ``batch_size``."""
        return make_plan(
            num_domains=num_domains,
            batch_size=batch_size,
            num_devices=self.num_devices,
            domain_parallel=self.domain_parallel,
            param_sharding=self.param_sharding,
        )


def format_bytes(count: float) -> str:
    """``count`` bytes in B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"


def _check_param_sharding(param_sharding: str) -> None:
    if param_sharding not in PARAM_SHARDINGS:
        raise PlanError(
            f"unknown param_sharding {param_sharding!r}; "
            f"expected one of {', '.join(PARAM_SHARDINGS)}"
        )


def fitting_device_count(available: int, batch_size: int, domain_parallel: int = 1) -> int:
    """The most devices, at most ``available``, whose data axis divides ``batch_size``.

    The default device count: all devices when they fit (the usual powers of two), else
    the largest count ``n`` with ``domain_parallel | n`` and ``(n / domain_parallel) | B``;
    0 when none does (``domain_parallel`` exceeds the devices).

    Example:
      >>> fitting_device_count(8, 64), fitting_device_count(3, 64), fitting_device_count(6, 32, 2)
      (8, 2, 4)
    """
    for count in range(available, 0, -1):
        if count % domain_parallel == 0 and batch_size % (count // domain_parallel) == 0:
            return count
    return 0


def make_plan(
    *,
    num_domains: int,
    batch_size: int,
    num_devices: int | None = None,
    domain_parallel: int = 1,
    param_sharding: str = "replicated",
    devices: Sequence[jax.Device] | None = None,
) -> ShardingPlan:
    """The mesh ``(domain_parallel, num_devices // domain_parallel)`` for a batch ``(D, B)``.

    Args:
        num_domains: D, the training domains of a step.
        batch_size: B, examples per domain and step.
        num_devices: how many devices to use (the first ones); None for as many as the
            batch allows (:func:`fitting_device_count`: all of them, unless B is not
            divisible). On several processes it must be all of them.
        domain_parallel: devices along the domain axis; must divide D.
        param_sharding: ``"replicated"`` or ``"fsdp"``.
        devices: the devices to choose from (default :func:`jax.devices`).

    Raises:
        PlanError: the numbers do not fit, naming which and what would.
    """
    devices = list(jax.devices() if devices is None else devices)
    _check_param_sharding(param_sharding)
    count = num_devices
    if count is None:
        count = len(devices)
        if jax.process_count() == 1:  # fewer devices than all, if B needs it
            count = fitting_device_count(len(devices), batch_size, domain_parallel)
        if count == 0:
            raise PlanError(
                f"domain_parallel {domain_parallel} does not divide the {len(devices)} devices"
            )
    if not 1 <= count <= len(devices):
        raise PlanError(f"num_devices {count} is not in [1, {len(devices)}]: this job sees "
                        f"{len(devices)} device(s)")
    if jax.process_count() > 1 and count != len(devices):
        raise PlanError(f"num_devices {count}: a multi-process job uses all {len(devices)} devices")
    if domain_parallel < 1 or count % domain_parallel:
        raise PlanError(
            f"domain_parallel {domain_parallel} does not divide the {count} devices"
        )
    if num_domains % domain_parallel:
        divisors = [k for k in range(1, num_domains + 1) if num_domains % k == 0 and count % k == 0]
        raise PlanError(
            f"domain_parallel {domain_parallel} does not divide the {num_domains} training "
            f"domains; use one of {divisors}"
        )
    data_size = count // domain_parallel
    if batch_size % data_size:
        raise PlanError(
            f"batch_size {batch_size} per domain is not divisible by the {data_size} devices "
            f"of the data axis ({count} devices / domain_parallel {domain_parallel}); "
            f"use a multiple of {data_size}"
        )
    chosen = np.array(devices[:count]).reshape(domain_parallel, data_size)
    if count == len(devices) and count > 1:
        try:  # the physical layout (ICI rings on TPU) where JAX knows one
            from jax.experimental import mesh_utils

            chosen = mesh_utils.create_device_mesh((domain_parallel, data_size), devices)
        except (ValueError, NotImplementedError, AssertionError):
            pass
    return ShardingPlan(Mesh(chosen, (DOMAIN_AXIS, DATA_AXIS)), param_sharding)
