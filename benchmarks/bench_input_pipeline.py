"""Throughput of the folder-dataset input pipeline (decode + augment), in images per second.

Generates a DomainBed-style folder of JPEGs (smooth synthetic pictures, so that they
compress like photographs) at two sizes, PACS-like 227x227 and photo-like 800x600,
builds it with :func:`experiments.data.folder.load_folder_dataset`, then times

* ``train``: :meth:`FolderDataset.train_batch` (decode, RandomResizedCrop, flip,
  ColorJitter, grayscale, normalise), 3 training domains x ``batch_size``;
* ``eval``: :meth:`FolderDataset.eval_batches` (decode, resize, normalise),

for each number of decoding threads and with JPEG DCT-scaled decoding on and off,
and prints a markdown table of images per second and of process CPU time per image
(the latter is meaningful on a busy machine too). Run::

    python benchmarks/bench_input_pipeline.py [--resolution 224] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image, ImageFilter

from experiments.data.folder import load_folder_dataset

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


def _time_train(dataset: object, steps: int) -> tuple[float, float]:
    """(images per wall second, CPU ms per image) of ``steps`` ``train_batch`` calls."""
    dataset.train_batch(0)  # type: ignore[attr-defined]  # warm-up, starts the threads
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        batch = dataset.train_batch(step)  # type: ignore[attr-defined]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    count = batch["x"].shape[0] * batch["x"].shape[1] * steps
    return count / elapsed, 1e3 * cpu / count


def _time_eval(dataset: object, batch_size: int) -> tuple[float, float]:
    """(images per wall second, CPU ms per image) of one pass over every ``in`` split."""
    count = 0
    start, cpu = time.perf_counter(), time.process_time()
    for env in range(len(dataset.environments)):  # type: ignore[attr-defined]
        for batch in dataset.eval_batches(env, "in", batch_size):  # type: ignore[attr-defined]
            count += batch["x"].shape[0]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return count / elapsed, 1e3 * cpu / count


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--per_class", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args(argv)

    rows = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        for label, size in (("227x227", (227, 227)), ("800x600", (800, 600))):
            root = make_folder(os.path.join(workdir, f"bench_{size[0]}"), size, args.per_class)
            encoded = sum(
                os.path.getsize(os.path.join(folder, name))
                for folder, _, names in os.walk(root)
                for name in names
            ) / sum(len(names) for _, _, names in os.walk(root))
            start = time.perf_counter()
            load_folder_dataset(
                root, workdir, test_envs=[0], holdout_fraction=0.2, trial_seed=0,
                batch_size=args.batch_size, seed=0, resolution=args.resolution,
                cache_dir=os.path.join(workdir, "cache"),
            )  # fmt: skip
            build = time.perf_counter() - start
            print(f"{label}: {encoded / 1024:.0f} KiB per JPEG, cache built in {build:.1f}s")
            for fast_decode in (True, False) if size[0] > 2 * args.resolution else (True,):
                for threads in sorted(set(args.threads)):
                    dataset = load_folder_dataset(
                        root, workdir, test_envs=[0], holdout_fraction=0.2, trial_seed=0,
                        batch_size=args.batch_size, seed=0, resolution=args.resolution,
                        fast_decode=fast_decode, num_workers=threads,
                        cache_dir=os.path.join(workdir, "cache"),
                    )  # fmt: skip
                    train = _time_train(dataset, args.steps)
                    evaluation = _time_eval(dataset, 64)
                    rows.append((label, fast_decode, threads, *train, *evaluation))
                    print(f"  fast_decode={fast_decode} threads={threads}: {train[0]:.0f} / "
                          f"{evaluation[0]:.0f} images/s", flush=True)  # fmt: skip

    print()
    print(
        f"Input pipeline at {args.resolution}x{args.resolution}, {os.cpu_count()} CPU cores "
        f"(load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after); train: decode "
        "+ DomainBed augmentation, eval: decode + resize; CPU ms: process CPU time per image"
    )
    print()
    print(
        "| JPEG size | fast_decode | threads | train images/s | train CPU ms/image "
        "| eval images/s | eval CPU ms/image |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, fast_decode, threads, train, train_ms, evaluation, eval_ms in rows:
        print(
            f"| {label} | {fast_decode} | {threads} | {train:.0f} | {train_ms:.2f} "
            f"| {evaluation:.0f} | {eval_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
