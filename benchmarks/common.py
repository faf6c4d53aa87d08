"""Helpers shared by the benchmarks (no JAX import: the torch benchmark uses them too)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

LAYOUTS = ("torch", "flax")


def resnet18_shapes(num_classes: int = 1000, layout: str = "torch") -> list[tuple[int, ...]]:
    """torchvision ResNet18's parameter shapes, in module order: in PyTorch's layout
    (convolutions ``(O, I, kh, kw)``, the head ``(classes, 512)``), or with
    ``layout="flax"`` in Flax's (``(kh, kw, I, O)`` and ``(512, classes)``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "flax":
        return [(shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4
                else shape[::-1] for shape in resnet18_shapes(num_classes)]
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for stage, channels in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride_block = block == 0 and stage > 0
            shapes += [(channels, in_channels, 3, 3), (channels,), (channels,),
                       (channels, channels, 3, 3), (channels,), (channels,)]
            if stride_block:
                shapes += [(channels, in_channels, 1, 1), (channels,), (channels,)]
            in_channels = channels
    shapes += [(num_classes, 512), (num_classes,)]
    return shapes


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


FLOOR_BLOCK = 262_144  # elements per block of the floor: D + 1 blocks of 1 MiB stay in cache


def memory_floor(num_domains: int, size: int
                 ) -> tuple[list[np.ndarray], Callable[[], np.ndarray]]:
    """D random flat float32 gradients, and NumPy reading them once and writing their sum
    on one thread: what one core pays for D reads and one write of ``size`` floats. On the
    CPU it is one of the JAX benchmarks' floor programs (:func:`least_floor`), and it is
    the floor of the one-thread torch benchmark.

    The sum goes into a preallocated output whose pages are touched before any timing;
    a fresh output on every call (as an earlier version of this floor did) times the
    kernel's page faults too, about 2x the memory traffic it stands for. The adds are
    ``np.add(..., out=)`` chains over blocks of :data:`FLOOR_BLOCK` elements, so that the
    chain's re-reads of the partial sum hit the cache, not memory: without the blocks,
    ``out = a0 + a1; out += a2; ...`` reads and writes the output D - 1 times.

    Returns:
      ``(flat, floor)``: the D arrays and a callable that computes their sum once (into
      the same output every time, which it returns).
    """
    rng = np.random.default_rng(0)
    flat = [rng.standard_normal(size, dtype=np.float32) for _ in range(num_domains)]
    out = np.ones(size, np.float32)  # every page touched before the timing

    def floor() -> np.ndarray:
        for start in range(0, size, FLOOR_BLOCK):
            stop = min(start + FLOOR_BLOCK, size)
            block = out[start:stop]
            np.add(flat[0][start:stop], flat[1][start:stop], out=block)
            for extra in flat[2:]:
                np.add(block, extra[start:stop], out=block)
        return out

    floor()
    return flat, floor


SETTLE = 0.02  # seconds of pause before each timed call (see interleaved_medians)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of every callable, timed in ``repeats`` interleaved rounds (one timed
    call of each per round), so that the load of a shared machine weighs on all of them
    alike.

    Each timed call follows an untimed call of the same callable, as a training step
    follows itself, and a pause of :data:`SETTLE` seconds. Timed right after another
    program's call, a callable paid for what that call left behind: after GradDrop's
    (225 MB of temporaries, 57,700 page faults per call) the jitted ERM mean took 6.7 ms
    instead of 3.9 ms, with no page fault of its own, and 5.7 ms still after one call of
    itself; after a 20 ms pause, 3.9 ms. Interleaved without either, the ERM mean ran at
    4.0x the floor "by default" and 0.8x with reassociation, the same loop."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            time.sleep(SETTLE)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def two_pass_limit(num_domains: int) -> float:
    """Time of two reads of the D x P gradients and one write of P, in floors (D reads
    and one write): the best a Gram pass plus a combine pass can do, (2D + 1) / (D + 1)."""
    return (2 * num_domains + 1) / (num_domains + 1)


def least_floor(medians: Mapping[Hashable, float], programs: Sequence[Hashable]) -> float:
    """The floor: the least median of ``programs``, each of which reads the D x P floats
    once and writes P (the jitted sum, the jitted ERM mean, NumPy's one-thread sum).

    Which of them is fastest depends on the machine and on the process: on one 2-core
    machine one NumPy core moved 9.5 GB/s where XLA's two moved 19.7; on another, NumPy's
    one core kept up with XLA's two, and in the full benchmark's process the jitted sum
    ran 7-18% slower than the jitted ERM mean (the same fused loop and one scaling) while
    alone the two were equal. The least of them is a floor that none of its own programs
    beats, and any rule that runs under it by more than the noise is flagged
    (:func:`floor_warnings`)."""
    return min(medians[name] for name in programs)


FLOOR_NOISE = 0.95  # how far under the floor a median may fall by the noise of the rounds


def floor_warnings(ratios: dict[str, float]) -> list[str]:
    """Lines that flag every method measured below the floor, by more than the noise of
    interleaved medians (:data:`FLOOR_NOISE`): a floor beaten is no floor, so such a
    figure points at the measurement, not at the method."""
    return [f"WARNING: {name} ran at {ratio:.2f}x the memory floor (< {FLOOR_NOISE}x): the "
            "floor or this measurement is suspect."
            for name, ratio in ratios.items() if ratio < FLOOR_NOISE]
