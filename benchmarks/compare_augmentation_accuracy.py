"""Accuracy of the same runs with the two augmentation paths (``--augmentation device``
and ``host``), on a generated 4-domain folder of JPEGs with learnable classes.

The folder: 4 classes (circle, square, triangle, cross) drawn at a random place, size
and colour, in 4 domains of different styles (``photo``: a colour gradient with noise
and blur; ``sketch``: black outlines on white; ``cartoon``: flat colours on a flat
background; ``noisy``: heavy noise), as JPEGs of 64 x 48, 64 x 64 and 80 x 60. The
runs: ERM, a ResNet-18 of width 8 from scratch at 32 x 32, test environment 0, the
same seeds for both paths (which then see the same examples in different orders and
with different random augmentations). Both are registered as a dataset and a model,
the way the trainer takes new ones. Prints per run and the mean over seeds the
training-domain validation accuracy and the test-domain accuracy at the last step::

    python benchmarks/compare_augmentation_accuracy.py [--steps 400] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DOMAINS = ("photo", "sketch", "cartoon", "noisy")
CLASSES = ("circle", "square", "triangle", "cross")
SIZES = ((64, 48), (64, 64), (80, 60))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, ...],
                fill: Any, outline: Any, width: int) -> None:  # fmt: skip
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    elif shape == "triangle":
        points = [((left + right) / 2, top), (right, bottom), (left, bottom)]
        draw.polygon(points, fill=fill, outline=outline, width=width)
    else:
        third_w, third_h = (right - left) / 3, (bottom - top) / 3
        draw.rectangle((left + third_w, top, right - third_w, bottom), fill=fill or outline)
        draw.rectangle((left, top + third_h, right, bottom - third_h), fill=fill or outline)


def make_image(rng: np.random.Generator, domain: str, shape: str) -> Image.Image:
    """One picture of ``shape`` in the style of ``domain``."""
    width, height = SIZES[rng.integers(len(SIZES))]
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if domain == "photo":
        low = rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((width, height), Image.BILINEAR)
    elif domain == "cartoon":
        image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
    else:
        image = Image.new("RGB", (width, height), (255, 255, 255) if domain == "sketch"
                          else tuple(int(c) for c in rng.integers(60, 200, 3)))  # fmt: skip
    side = rng.uniform(0.4, 0.8) * min(width, height)
    left = rng.uniform(0, width - side)
    top = rng.uniform(0, height - side)
    box = (left, top, left + side, top + side)
    draw = ImageDraw.Draw(image)
    if domain == "sketch":
        _draw_shape(draw, shape, box, None, (0, 0, 0), 2)
    else:
        _draw_shape(draw, shape, box, colour, None, 0)
    pixels = np.asarray(image, np.int16)
    noise = {"photo": 8, "sketch": 4, "cartoon": 2, "noisy": 50}[domain]
    pixels = pixels + rng.integers(-noise, noise + 1, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if domain == "photo":
        image = image.filter(ImageFilter.GaussianBlur(1))
    return image


def make_folder(root: str, per_class: int, seed: int = 0) -> str:
    """Writes ``root/<domain>/<class>/<i>.jpg`` and returns ``root``."""
    rng = np.random.default_rng(seed)
    for domain in DOMAINS:
        for shape in CLASSES:
            folder = os.path.join(root, domain, shape)
            os.makedirs(folder, exist_ok=True)
            for index in range(per_class):
                make_image(rng, domain, shape).save(os.path.join(folder, f"{index:04d}.jpg"),
                                                    quality=90)  # fmt: skip
    return root


def register(root: str, resolution: int, width: int) -> str:
    """Registers the folder at ``resolution`` and a ResNet-18 of ``width``; its name."""
    import dataclasses

    from experiments import data, models
    from experiments.data.folder import load_folder_dataset
    from experiments.models.resnet import ResNet18

    def load(spec: data.DatasetSpec, data_dir: str | None, **options: Any) -> Any:
        del data_dir
        return load_folder_dataset(spec.root, None, resolution=resolution,
                                   cache_dir=os.path.join(root, ".cache"), **options)  # fmt: skip

    models.register(models.Model(
        name=f"resnet18_width{width}",
        build=lambda classes, hparams: ResNet18(classes, width=width),
    ))  # fmt: skip
    spec = data.get_dataset_spec(root)
    name = "GeneratedShapes"
    data.register(dataclasses.replace(
        spec, name=name, load=load, input_shape=(resolution, resolution, 3),
        model=f"resnet18_width{width}", folders=(), root=root,
    ))  # fmt: skip
    return name


def main(argv: list[str] | None = None) -> None:
    """Trains every (path, seed) and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--per_class", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)

    from experiments.training import TrainConfig, run

    results: dict[str, list[tuple[float, float, float]]] = {"device": [], "host": []}
    with tempfile.TemporaryDirectory() as workdir:
        root = make_folder(os.path.join(workdir, "shapes"), args.per_class)
        name = register(root, args.resolution, args.width)
        for seed in args.seeds:
            for augmentation in ("device", "host"):
                config = TrainConfig(
                    dataset=name, algorithm="erm", test_envs=(0,), steps=args.steps,
                    checkpoint_freq=args.steps, seed=seed, augmentation=augmentation,
                    hparams={"batch_size": args.batch_size, "lr": args.lr},
                    output_dir=os.path.join(workdir, f"{augmentation}_{seed}"),
                )  # fmt: skip
                start = time.perf_counter()
                record = run(config, log=lambda line: None)[-1]
                elapsed = time.perf_counter() - start
                validation = np.mean([record[f"env{env}_out_acc"] for env in (1, 2, 3)])
                test = record["env0_in_acc"]
                results[augmentation].append((validation, test, elapsed))
                print(f"seed {seed} {augmentation:>6}: train-domain val acc "
                      f"{100 * validation:5.1f}, test-domain ({DOMAINS[0]}) acc "
                      f"{100 * test:5.1f}, {elapsed:.0f} s", flush=True)  # fmt: skip

    print()
    print(f"ERM, ResNet-18 width {args.width} from scratch at {args.resolution}x"
          f"{args.resolution}, {args.steps} steps of 3 domains x {args.batch_size}, lr "
          f"{args.lr}, test env 0 ({DOMAINS[0]}), seeds {args.seeds}; mean (min-max)")
    print()
    print("| augmentation | train-domain val acc | test-domain acc | wall s per run |")
    print("|---|---:|---:|---:|")
    for augmentation, rows in results.items():
        values = np.array(rows)
        cells = [
            f"{100 * values[:, k].mean():.1f} ({100 * values[:, k].min():.1f}-"
            f"{100 * values[:, k].max():.1f})"
            for k in (0, 1)
        ]
        print(f"| {augmentation} | {cells[0]} | {cells[1]} | {values[:, 2].mean():.0f} |")


if __name__ == "__main__":
    main()
