"""Host CPU per image of the folder-dataset input pipeline: the device path against the
host path, on the same generated JPEGs, in one run.

Generates a DomainBed-style folder of JPEGs (smooth synthetic pictures, so that they
compress like photographs) at two sizes, PACS-like 227x227 and photo-like 800x600,
builds both caches with :func:`experiments.data.folder.load_folder_dataset` (timed),
then measures, for each number of reading threads:

* ``host`` (``augmentation="host"``, the former pipeline): ``train_batch`` decodes each
  JPEG and augments it with PIL (RandomResizedCrop, flip, ColorJitter, grayscale,
  normalise), 3 training domains x ``batch_size``; ``eval_batches`` decodes and resizes;
  with JPEG DCT-scaled decoding on and off for the large pictures;
* ``device`` (``augmentation="device"``): what the host does on that path,
  ``stored_train_batch`` and ``stored_eval_batches`` (read the stored uint8 squares
  and stack them), without the device's work.

Process CPU time per image is the figure to compare (it is meaningful on a busy
machine too); images per second are wall-clock. The device's own work, the jitted
``DeviceTransform.train`` and ``eval`` on one batch, is timed apart on whatever device
JAX has (here the CPU: it competes with the reader for the same cores), with the
ratio of host CPU per image, host path over device path. The stored cache's bytes per
image are printed for the cache-size estimates of the README. Run::

    python benchmarks/bench_input_pipeline.py [--resolution 224] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from experiments.data.folder import FolderDataset, load_folder_dataset

_DOMAINS = ("domain_a", "domain_b", "domain_c", "domain_d")
_CLASSES = ("class_0", "class_1", "class_2")


def _synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random picture: blurred blobs over a colour gradient, with mild noise."""
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((width, height), Image.BICUBIC)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 80))
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.integers(-6, 7, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_folder(root: str, size: tuple[int, int], per_class: int, seed: int = 0) -> str:
    """Writes ``root/<domain>/<class>/<i>.jpg`` (quality 90) and returns ``root``."""
    rng = np.random.default_rng(seed)
    for domain in _DOMAINS:
        for class_name in _CLASSES:
            folder = os.path.join(root, domain, class_name)
            os.makedirs(folder, exist_ok=True)
            for index in range(per_class):
                image = _synthetic_photo(rng, *size)
                image.save(os.path.join(folder, f"{index:04d}.jpg"), quality=90)
    return root


def _time_train(load: Callable[[int], dict], steps: int) -> tuple[float, float]:
    """(images per wall second, CPU ms per image) of ``steps`` calls of ``load(step)``."""
    load(0)  # warm-up, starts the threads
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        batch = load(step)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    count = batch["y"].size * steps
    return count / elapsed, 1e3 * cpu / count


def _time_eval(dataset: FolderDataset, batch_size: int, stored: bool) -> tuple[float, float]:
    """(images per wall second, CPU ms per image) of one pass over every ``in`` split."""
    batches = dataset.stored_eval_batches if stored else dataset.eval_batches
    count = 0
    start, cpu = time.perf_counter(), time.process_time()
    for env in range(len(dataset.environments)):
        for batch in batches(env, "in", batch_size):
            count += batch["y"].shape[0]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return count / elapsed, 1e3 * cpu / count


def _time_device(dataset: FolderDataset, repeats: int = 3) -> tuple[float, float]:
    """Milliseconds per image of the jitted device transforms (train, eval), compiled
    first, on JAX's default device."""
    import jax

    transform = dataset.device_transform
    assert transform is not None
    stored = dataset.stored_train_batch(0)
    evaluation = next(dataset.stored_eval_batches(0, "in", stored["y"].size))
    on_device = jax.device_put(stored)
    eval_on_device = jax.device_put(evaluation)
    jax.block_until_ready(transform.train(on_device, 0))
    jax.block_until_ready(transform.eval(eval_on_device))
    start = time.perf_counter()
    for step in range(1, repeats + 1):
        jax.block_until_ready(transform.train(on_device, step))
    train = (time.perf_counter() - start) / repeats / stored["y"].size
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(transform.eval(eval_on_device))
    evaluation_time = (time.perf_counter() - start) / repeats / evaluation["y"].size
    return 1e3 * train, 1e3 * evaluation_time


def _directory_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(path)
        for name in names
    )


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--per_class", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args(argv)

    import jax

    rows, notes = [], []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        for label, size in (("227x227", (227, 227)), ("800x600", (800, 600))):
            root = make_folder(os.path.join(workdir, f"bench_{size[0]}"), size, args.per_class)
            images = len(_DOMAINS) * len(_CLASSES) * args.per_class
            encoded = _directory_bytes(root) / images
            cache_dir = os.path.join(workdir, f"cache_{size[0]}")
            common = dict(
                test_envs=[0], holdout_fraction=0.2, trial_seed=0, batch_size=args.batch_size,
                seed=0, resolution=args.resolution, cache_dir=cache_dir,
            )  # fmt: skip
            builds = {}
            for augmentation in ("host", "device"):
                start = time.perf_counter()
                load_folder_dataset(root, workdir, augmentation=augmentation, **common)
                builds[augmentation] = time.perf_counter() - start
            stored = sum(  # the decoded cache's folder: <name>-<hash>-pixels<S>-<fingerprint>
                _directory_bytes(entry.path)
                for entry in os.scandir(cache_dir)
                if entry.is_dir() and "-pixels" in entry.name
            )
            note = (
                f"{label}: {encoded / 1024:.0f} KiB per JPEG; cache built in "
                f"{builds['host']:.1f} s (encoded) and {builds['device']:.1f} s (decoded); "
                f"decoded cache {stored / images:,.0f} bytes per image"
            )
            print(note, flush=True)
            notes.append(note)
            cases = [("host", True), ("device", True)]
            if size[0] > 2 * args.resolution:
                cases.insert(1, ("host", False))
            for augmentation, fast_decode in cases:
                for threads in sorted(set(args.threads)):
                    dataset = load_folder_dataset(
                        root, workdir, augmentation=augmentation, fast_decode=fast_decode,
                        num_workers=threads, **common,
                    )  # fmt: skip
                    device = augmentation == "device"
                    loader = dataset.stored_train_batch if device else dataset.train_batch
                    train = _time_train(loader, args.steps)
                    evaluation = _time_eval(dataset, 64, stored=device)
                    path = "device (host side)" if device else "host"
                    decode = "-" if device else str(fast_decode)
                    rows.append((label, path, decode, threads, *train, *evaluation))
                    print(f"  {path} fast_decode={decode} threads={threads}: {train[1]:.3f} / "
                          f"{evaluation[1]:.3f} CPU ms per image", flush=True)  # fmt: skip
            device_ms = _time_device(dataset)
            note = (
                f"{label}: the device's work on {jax.devices()[0].device_kind}: "
                f"{device_ms[0]:.2f} ms per training image, {device_ms[1]:.2f} ms per "
                "evaluation image"
            )
            print(note, flush=True)
            notes.append(note)

    print()
    print(
        f"Input pipeline at {args.resolution}x{args.resolution}, {os.cpu_count()} CPU cores "
        f"(load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after); train: "
        f"{len(_DOMAINS) - 1} domains x {args.batch_size}; CPU ms: process CPU time per image"
    )
    print()
    print(
        "| JPEG size | path | fast_decode | threads | train images/s | train CPU ms/image "
        "| eval images/s | eval CPU ms/image |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for label, path, decode, threads, train, train_ms, evaluation, eval_ms in rows:
        print(
            f"| {label} | {path} | {decode} | {threads} | {train:.0f} | {train_ms:.3f} "
            f"| {evaluation:.0f} | {eval_ms:.3f} |"
        )
    print()
    print("Host CPU per training image, host path (fast_decode) over device path, same "
          "JPEG size and threads:")
    for label, path, decode, threads, _, train_ms, _, eval_ms in rows:
        if path != "host" or decode != "True":
            continue
        for other in rows:
            if other[0] == label and other[1] != "host" and other[3] == threads:
                print(f"  {label}, {threads} threads: train {train_ms / other[5]:.1f}x, "
                      f"eval {eval_ms / other[7]:.1f}x")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
