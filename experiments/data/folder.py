"""DomainBed's image datasets (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet) from folders.

Layout, as DomainBed's ``MultipleEnvironmentImageFolder`` (one torchvision
``ImageFolder`` per domain)::

    <data_dir>/<dataset>/<domain>/<class>/<image>     e.g. data/PACS/photo/dog/056_0001.jpg

Domains are the sorted sub-folders of the dataset folder, classes the sorted
sub-folders of a domain (the same in every domain), images every file with an image
extension below a class folder, in sorted order (``os.walk``), as torchvision lists them.
``name`` may be one of :data:`DOMAINBED_DATASETS` (folder ``<data_dir>/<name>`` or
DomainBed's folder name: ``office_home``, ``terra_incognita``, ``domain_net``) or the
path of any folder with that layout.

Pipeline:

1. **Build once.** A tensorflow-datasets ``GeneratorBasedBuilder`` writes the encoded
   image bytes (checked to decode) with their labels into ArrayRecord files, one split
   per domain, in a cache folder named by a fingerprint of the file list, sizes and
   modification times; a changed folder gets a new cache (the stale one is removed).
2. **Read** with ``tfds.builder_from_directory(...).as_data_source()`` (random access,
   no TensorFlow) and Grain: per training domain ``MapDataset.source(in split)
   .shuffle(seed).repeat().random_map(augment)``, so the element at position ``p`` of
   domain ``d`` depends on (seed, d, p) only; step ``t`` takes positions
   ``t * B ... t * B + B - 1`` of every training domain. ``train_batch(step)`` is thus a
   pure function of (seed, step): a resumed run sees the batches of an uninterrupted
   one. A Grain ``IterDataset`` decodes ahead on ``num_workers`` threads.
3. **Augment** as DomainBed (implemented with PIL/NumPy, the same PIL operations as
   torchvision's): ``RandomResizedCrop(resolution, scale=(0.7, 1))``,
   ``RandomHorizontalFlip()``, ``ColorJitter(0.3, 0.3, 0.3, 0.3)``,
   ``RandomGrayscale(0.1)``, ImageNet normalisation; evaluation resizes to
   ``(resolution, resolution)``. JPEGs are decoded at a reduced DCT scale when the
   crop still has at least ``resolution`` pixels a side (``fast_decode``).

Splits follow DomainBed's ``train.py``: the ``out`` split of environment ``i`` is the
first ``int(len(env) * holdout_fraction)`` indices of a permutation seeded by
``seed_hash(trial_seed, i)``, ``in`` the rest. Unlike DomainBed, evaluation batches are
never augmented (DomainBed evaluates training environments through their augmenting
transform).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from experiments.data.base import Batch, Split
from experiments.data.mnist import holdout_split
from experiments.seeding import seed_hash

__all__ = [
    "DOMAINBED_DATASETS",
    "DOMAINBED_NUM_CLASSES",
    "folder_classes",
    "IMAGE_EXTENSIONS",
    "FolderDataset",
    "augment_image",
    "decode_image",
    "eval_transform",
    "load_folder_dataset",
]

_log = logging.getLogger(__name__)

DOMAINBED_DATASETS: dict[str, tuple[str, ...]] = {
    "PACS": ("art_painting", "cartoon", "photo", "sketch"),
    "VLCS": ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
    "OfficeHome": ("Art", "Clipart", "Product", "Real World"),
    # Sorted as DomainBed lists them (sorted(os.scandir)): L100, L38, L43, L46.
    "TerraIncognita": ("location_100", "location_38", "location_43", "location_46"),
    "DomainNet": ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
}
"""DomainBed's datasets and their domains, in DomainBed's environment order."""

DOMAINBED_NUM_CLASSES: dict[str, int] = {
    "PACS": 7,
    "VLCS": 5,
    "OfficeHome": 65,
    "TerraIncognita": 10,
    "DomainNet": 345,
}
"""The number of classes of each of :data:`DOMAINBED_DATASETS`."""

_DOMAINBED_FOLDERS: dict[str, str] = {
    "PACS": "PACS",
    "VLCS": "VLCS",
    "OfficeHome": "office_home",
    "TerraIncognita": "terra_incognita",
    "DomainNet": "domain_net",
}

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)  # fmt: skip
"""torchvision's ``IMG_EXTENSIONS`` (compared case-insensitively)."""

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_CACHE_FORMAT = 1  # Bump to invalidate every cache when the stored format changes.
_BUILDER_VERSION = "1.0.0"
_MANIFEST = "layout.json"


def _layout_help(root: str) -> str:
    return (
        "expected layout:\n"
        f"  {root}/<domain>/<class>/<image>   (e.g. {root}/photo/dog/0001.jpg)\n"
        "with the same class folders in every domain; image extensions: "
        + " ".join(IMAGE_EXTENSIONS)
    )


# Scanning -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The images of a dataset folder: per domain, relative paths and labels."""

    root: str
    environments: tuple[str, ...]
    classes: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]  # per environment, relative to root
    labels: tuple[tuple[int, ...], ...]
    fingerprint: str


def _subfolders(path: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``path``."""
    entries = os.scandir(path)
    return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _class_images(class_dir: str) -> list[str]:
    """Image files below ``class_dir`` in torchvision's ``make_dataset`` order."""
    found = []
    for dirpath, _, filenames in sorted(os.walk(class_dir, followlinks=True)):
        for filename in sorted(filenames):
            if filename.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, filename))
    return found


def folder_classes(name: str, data_dir: str | None) -> tuple[str, tuple[str, ...], int]:
    """``(dataset name, domains, number of classes)`` of a folder dataset given by path
    (or by name under ``data_dir``), from its folder names only: no image is read.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: the folder has no domain folders.
    """
    canonical, root, _ = _resolve_root(name, data_dir)
    domains = tuple(_subfolders(root))
    if not domains:
        raise ValueError(f"dataset folder {root!r} has no domain folders; {_layout_help(root)}")
    return canonical, domains, len(_subfolders(os.path.join(root, domains[0])))


def _scan(root: str, expected_domains: tuple[str, ...] | None) -> _Layout:
    """Lists domains, classes and images of ``root``; raises on a malformed layout."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {root!r} does not exist; {_layout_help(root)}")
    environments = tuple(_subfolders(root))
    if not environments:
        raise ValueError(f"dataset folder {root!r} has no domain folders; {_layout_help(root)}")
    if expected_domains is not None and environments != expected_domains:
        missing = sorted(set(expected_domains) - set(environments))
        extra = sorted(set(environments) - set(expected_domains))
        raise ValueError(
            f"dataset folder {root!r} has domains {list(environments)}, expected "
            f"{list(expected_domains)} (missing {missing}, unexpected {extra}); "
            + _layout_help(root)
        )
    classes: tuple[str, ...] | None = None
    first = environments[0]
    files, labels, stats = [], [], []
    for environment in environments:
        domain_dir = os.path.join(root, environment)
        domain_classes = tuple(_subfolders(domain_dir))
        if not domain_classes:
            raise ValueError(
                f"domain {environment!r} ({domain_dir}) is empty: no class folders; "
                + _layout_help(root)
            )
        if classes is None:
            classes = domain_classes
        elif domain_classes != classes:
            missing = sorted(set(classes) - set(domain_classes))
            extra = sorted(set(domain_classes) - set(classes))
            raise ValueError(
                f"class folders differ across domains: domain {environment!r} lacks "
                f"{missing} and has extra {extra} compared with domain {first!r} "
                f"({len(classes)} classes: {list(classes)[:10]}...)"
            )
        domain_files, domain_labels = [], []
        for label, class_name in enumerate(domain_classes):
            images = _class_images(os.path.join(domain_dir, class_name))
            if not images:
                raise ValueError(
                    f"class folder {os.path.join(domain_dir, class_name)!r} has no images; "
                    + _layout_help(root)
                )
            for path in images:
                relative = os.path.relpath(path, root)
                status = os.stat(path)
                stats.append((relative, status.st_size, status.st_mtime_ns))
                domain_files.append(relative)
                domain_labels.append(label)
        files.append(tuple(domain_files))
        labels.append(tuple(domain_labels))
    digest = hashlib.sha256(
        json.dumps([_CACHE_FORMAT, list(environments), list(classes or ()), stats]).encode()
    ).hexdigest()
    return _Layout(
        root=root,
        environments=environments,
        classes=tuple(classes or ()),
        files=tuple(files),
        labels=tuple(labels),
        fingerprint=digest[:16],
    )


# Images -------------------------------------------------------------------------------


def decode_image(data: bytes, path: str, *, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decodes encoded image bytes into an RGB PIL image.

    Args:
        data: the encoded file (JPEG, PNG, ...).
        path: the file's name, for error messages.
        min_size: if given, a JPEG may be decoded at a reduced DCT scale (1/2, 1/4,
            1/8) that keeps at least ``(width, height)`` pixels; the image's ``info``
            then holds ``"draft_scale"`` (decoded pixels per original pixel).

    Returns:
        The loaded RGB image (palette, grey, CMYK and alpha images are converted as
        torchvision's ``pil_loader`` does, with ``convert("RGB")``).

    Raises:
        ValueError: naming ``path``, when the bytes do not decode.
    """
    try:
        image = Image.open(io.BytesIO(data))
        scale = 1.0
        if min_size is not None and image.format == "JPEG":
            width = image.size[0]
            drafted = image.draft(None, (max(1, min_size[0]), max(1, min_size[1])))
            if drafted is not None:
                scale = image.size[0] / width
        image.load()
        if image.mode != "RGB":
            image = image.convert("RGB")
    except Exception as error:  # PIL raises many types for bad data.
        raise ValueError(f"cannot decode image {path}: {type(error).__name__}: {error}") from error
    image.info["draft_scale"] = scale
    return image


def _random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: ``(left, top, crop_w, crop_h)``."""
    area = width * height
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target_area * aspect_ratio))
        crop_h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return left, top, crop_w, crop_h
    ratio = width / height  # Fallback: a central crop.
    if ratio < 3 / 4:
        crop_w, crop_h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        crop_w, crop_h = round(height * (4 / 3)), height
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def _adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL ``adjust_hue``: rotate the HSV hue channel (uint8, wrapping)."""
    hue, saturation, value = image.convert("HSV").split()
    shifted = np.asarray(hue, dtype=np.uint8) + np.uint8(int(hue_factor * 255) % 256)
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), saturation, value)).convert("RGB")


def _normalize(image: Image.Image) -> np.ndarray:
    """uint8 RGB -> float32 ``(H, W, 3)`` with ImageNet mean and std."""
    pixels = np.asarray(image, dtype=np.float32)
    return (pixels - IMAGENET_MEAN * 255.0) * (1.0 / (IMAGENET_STD * 255.0))


def eval_transform(
    data: bytes, path: str, resolution: int, *, fast_decode: bool = True
) -> np.ndarray:
    """DomainBed's evaluation transform: ``Resize((r, r))``, ImageNet normalisation.

    Returns:
        float32 ``(resolution, resolution, 3)``.
    """
    size = (resolution, resolution)
    image = decode_image(data, path, min_size=size if fast_decode else None)
    return _normalize(image.resize(size, Image.BILINEAR))


def augment_image(
    data: bytes,
    path: str,
    resolution: int,
    rng: np.random.Generator,
    *,
    fast_decode: bool = True,
    crop_scale: tuple[float, float] = (0.7, 1.0),
) -> np.ndarray:
    """DomainBed's training augmentation of one encoded image.

    ``RandomResizedCrop(resolution, scale=crop_scale)``, ``RandomHorizontalFlip()``,
    ``ColorJitter(0.3, 0.3, 0.3, 0.3)`` (the four adjustments in random order),
    ``RandomGrayscale(0.1)`` and ImageNet normalisation, with torchvision's PIL operations.

    Args:
        data: the encoded image.
        path: its name, for errors.
        resolution: output side.
        rng: the only source of randomness.
        fast_decode: decode JPEGs at a reduced scale that keeps the crop at least
            ``resolution`` pixels a side.
        crop_scale: range of the crop's fraction of the image area.

    Returns:
        float32 ``(resolution, resolution, 3)``.
    """
    with Image.open(io.BytesIO(data)) as header:  # Reads the header only.
        width, height = header.size
    left, top, crop_w, crop_h = _random_resized_crop_box(width, height, rng, crop_scale)
    min_size = None
    if fast_decode:
        min_size = (
            math.ceil(width * resolution / crop_w),
            math.ceil(height * resolution / crop_h),
        )
    image = decode_image(data, path, min_size=min_size)
    scale = image.info["draft_scale"]
    box = (left * scale, top * scale, (left + crop_w) * scale, (top + crop_h) * scale)
    image = image.resize((resolution, resolution), Image.BILINEAR, box=box)
    if rng.uniform() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    factors = (
        rng.uniform(0.7, 1.3),  # brightness
        rng.uniform(0.7, 1.3),  # contrast
        rng.uniform(0.7, 1.3),  # saturation
        rng.uniform(-0.3, 0.3),  # hue
    )
    for adjustment in rng.permutation(4):
        if adjustment == 0:
            image = ImageEnhance.Brightness(image).enhance(factors[0])
        elif adjustment == 1:
            image = ImageEnhance.Contrast(image).enhance(factors[1])
        elif adjustment == 2:
            image = ImageEnhance.Color(image).enhance(factors[2])
        else:
            image = _adjust_hue(image, factors[3])
    if rng.uniform() < 0.1:
        image = image.convert("L").convert("RGB")
    return _normalize(image)


# Building the ArrayRecord cache -------------------------------------------------------


def _read_checked(root: str, relative: str) -> bytes:
    """The bytes of an image file, after checking that they decode."""
    path = os.path.join(root, relative)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    decode_image(data, path, min_size=(8, 8))  # A 1/8-scale decode still reads every block.
    return data


def _make_builder(layout: _Layout, data_dir: str, num_workers: int) -> Any:
    """A ``GeneratorBasedBuilder`` writing ``layout``'s images, one split per domain."""
    import tensorflow_datasets as tfds

    class _DomainBedFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Encoded images of a DomainBed-style folder, split ``env<i>`` per domain."""

        name = "domainbed_folder"
        VERSION = tfds.core.Version(_BUILDER_VERSION)
        # No source files or checksums to look up (and importlib.resources cannot
        # locate the package under every kind of install).
        code_path = None

        def _info(self) -> Any:
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"Images of {layout.root} (fingerprint {layout.fingerprint}).",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(names=list(layout.classes)),
                        "path": tfds.features.Text(),
                    }
                ),
                disable_shuffling=True,  # Records keep the ImageFolder order.
            )

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            del dl_manager
            return {
                f"env{index}": self._generate_examples(index)
                for index in range(len(layout.environments))
            }

        def _generate_examples(self, environment: int) -> Iterator[tuple[int, dict[str, Any]]]:
            files = layout.files[environment]
            labels = layout.labels[environment]
            chunk = 256  # Bounded read-ahead: never the whole domain in memory.
            with futures.ThreadPoolExecutor(num_workers) as pool:
                for start in range(0, len(files), chunk):
                    names = files[start : start + chunk]
                    contents = pool.map(lambda name: _read_checked(layout.root, name), names)
                    for offset, (name, data) in enumerate(zip(names, contents, strict=True)):
                        index = start + offset
                        yield index, {"image": data, "label": labels[index], "path": name}

    return _DomainBedFolder(data_dir=data_dir, file_format="array_record")


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive lock (``fcntl.flock``; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _default_cache_root(data_dir: str | None) -> str:
    """``<data_dir>/.tfds_cache`` if writable, else a folder under ``~/.cache``."""
    if data_dir is not None and os.access(data_dir, os.W_OK):
        return os.path.join(data_dir, ".tfds_cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "corgrad_jax", "folder_datasets")


def _ensure_cache(layout: _Layout, name: str, cache_root: str, num_workers: int) -> str:
    """Builds (once) the ArrayRecord cache of ``layout``; returns the builder's data dir."""
    # One cache per folder (named after it and its absolute path), rebuilt when its
    # fingerprint changes.
    folder_hash = hashlib.sha256(os.path.abspath(layout.root).encode()).hexdigest()[:8]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) + "-" + folder_hash
    cache_dir = os.path.join(cache_root, f"{safe_name}-{layout.fingerprint}")
    manifest_path = os.path.join(cache_dir, _MANIFEST)
    version_dir = os.path.join(cache_dir, "domainbed_folder", _BUILDER_VERSION)
    os.makedirs(cache_root, exist_ok=True)
    with _file_lock(os.path.join(cache_root, f".{safe_name}.lock")):
        if not (os.path.exists(manifest_path) and os.path.isdir(version_dir)):
            if os.path.exists(cache_dir):
                shutil.rmtree(cache_dir)  # An interrupted build.
            _log.info("building %s from %s into %s", name, layout.root, cache_dir)
            _make_builder(layout, cache_dir, num_workers).download_and_prepare()
            manifest = {
                "root": layout.root,
                "fingerprint": layout.fingerprint,
                "environments": list(layout.environments),
                "classes": list(layout.classes),
                "sizes": [len(files) for files in layout.files],
            }
            with open(manifest_path + ".tmp", "w") as file:
                json.dump(manifest, file, indent=1)
            os.replace(manifest_path + ".tmp", manifest_path)
            for entry in os.scandir(cache_root):  # Caches of older versions of the folder.
                if (
                    entry.is_dir()
                    and entry.name.startswith(f"{safe_name}-")
                    and (entry.path != cache_dir)
                ):
                    _log.info("removing stale cache %s", entry.path)
                    shutil.rmtree(entry.path, ignore_errors=True)
    return version_dir


# The dataset --------------------------------------------------------------------------


class _Subset(Sequence):
    """Random access to ``source[keys[i]]``."""

    def __init__(self, source: Sequence[Any], keys: np.ndarray) -> None:
        self._source = source
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self._source[int(self._keys[index])]


class FolderDataset:
    """A folder dataset split into environments (:class:`~experiments.data.base.EnvironmentSplits`).

    Built by :func:`load_folder_dataset`. Attributes as the protocol, plus ``classes``
    (class folder names, label order) and ``root``.
    """

    def __init__(
        self,
        *,
        name: str,
        layout: _Layout,
        sources: Sequence[Sequence[dict[str, Any]]],
        test_envs: Sequence[int],
        holdout_fraction: float,
        trial_seed: int,
        batch_size: int,
        seed: int,
        augment: bool,
        resolution: int,
        fast_decode: bool,
        num_workers: int,
    ) -> None:
        import grain

        self._grain = grain
        self.name = name
        self.root = layout.root
        self.environments = layout.environments
        self.classes = layout.classes
        self.num_classes = len(layout.classes)
        self.input_shape = (resolution, resolution, 3)
        self.train_envs = tuple(i for i in range(len(self.environments)) if i not in test_envs)
        self.batch_size = batch_size
        self.seed = seed
        self.resolution = resolution
        self._augment = augment
        self._fast_decode = fast_decode
        self._num_workers = num_workers
        self._sources = sources
        self._splits: list[dict[str, np.ndarray]] = []
        for index, source in enumerate(sources):
            in_keys, out_keys = holdout_split(
                len(source), holdout_fraction, seed_hash(trial_seed, index)
            )
            self._splits.append({"in": in_keys, "out": out_keys})
        for index in self.train_envs:
            if len(self._splits[index]["in"]) == 0:
                raise ValueError(
                    f"training environment {self.environments[index]!r} has no examples "
                    f"left after holding out {holdout_fraction:.0%} of {len(sources[index])}"
                )
        self._train_elements = [self._train_dataset(index) for index in self.train_envs]
        self._iterator: Any = None
        self._next_step = -1
        self._rows: tuple[range, range] = (range(0), range(0))

    # -- elements --

    def _eval_element(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        path = os.path.join(self.root, _text(record["path"]))
        x = eval_transform(record["image"], path, self.resolution, fast_decode=self._fast_decode)
        return {"x": x, "y": np.int32(record["label"])}

    def _train_element(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        path = os.path.join(self.root, _text(record["path"]))
        x = augment_image(
            record["image"], path, self.resolution, rng, fast_decode=self._fast_decode
        )
        return {"x": x, "y": np.int32(record["label"])}

    def _train_dataset(self, env: int) -> Any:
        """Infinite, per-epoch reshuffled, augmented ``in`` split of environment ``env``."""
        dataset = self._grain.MapDataset.source(self._split_source(env, "in"))
        dataset = dataset.shuffle(seed=seed_hash("shuffle", self.seed, env) % 2**32).repeat()
        if self._augment:
            return dataset.random_map(
                self._train_element, seed=seed_hash("augment", self.seed, env) % 2**32
            )
        return dataset.map(self._eval_element)

    def _split_source(self, env: int, split: Split) -> _Subset:
        if not 0 <= env < len(self.environments):
            raise ValueError(f"environment {env} out of range [0, {len(self.environments)})")
        if split not in ("in", "out"):
            raise ValueError(f"split must be 'in' or 'out', got {split!r}")
        return _Subset(self._sources[env], self._splits[env][split])

    def split_size(self, env: int, split: Split) -> int:
        """Number of examples in environment ``env``'s ``split``."""
        return len(self._split_source(env, split))

    def split_keys(self, env: int, split: Split) -> np.ndarray:
        """Indices (ImageFolder order within the domain) of environment ``env``'s split."""
        self._split_source(env, split)
        return self._splits[env][split].copy()

    # -- the protocol --

    def _element(self, rows: tuple[range, range], index: int) -> dict[str, Any]:
        """Element ``index`` of the flattened stream ``(step, domain, position)`` of ``rows``."""
        domains, positions = rows
        per_step = len(domains) * len(positions)
        step, rest = divmod(index, per_step)
        domain, position = divmod(rest, len(positions))
        return self._train_elements[domains[domain]][step * self.batch_size + positions[position]]

    def _start(self, step: int, rows: tuple[range, range]) -> None:
        per_step = len(rows[0]) * len(rows[1])
        element = functools.partial(self._element, rows)
        dataset = self._grain.MapDataset.range(step * per_step, sys.maxsize).map(element)
        options = self._grain.ReadOptions(
            num_threads=self._num_workers, prefetch_buffer_size=2 * per_step
        )
        self._iterator = iter(dataset.to_iter_dataset(options).batch(per_step))
        self._next_step = step
        self._rows = rows

    def train_batch(
        self, step: int, domains: slice = slice(None), examples: slice = slice(None)
    ) -> Batch:
        """The minibatches of step ``step``: x ``(D, B, H, W, 3)`` float32, y ``(D, B)`` int32.

        ``domains`` and ``examples`` select rows of that batch; only those are decoded.
        Sequential calls (with the same rows) are served by a thread pool that decodes
        ahead; any other step restarts it there. The result depends on (seed, step) only.
        """
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        rows = (range(len(self.train_envs))[domains], range(self.batch_size)[examples])
        if not rows[0] or not rows[1]:
            raise ValueError(f"rows [{domains}, {examples}] of the batch are empty")
        if self._iterator is None or step != self._next_step or rows != self._rows:
            self._start(step, rows)
        batch = next(self._iterator)
        self._next_step = step + 1
        shape = (len(rows[0]), len(rows[1]))
        return {"x": batch["x"].reshape(shape + self.input_shape), "y": batch["y"].reshape(shape)}

    def eval_batches(
        self, env: int, split: Split, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[Batch]:
        """Every example of ``env``'s ``split`` once (positions ``[start, stop)`` of it),
        in index order, un-augmented."""
        self._split_source(env, split)  # checks env and split
        keys = self._splits[env][split][start:stop]
        if len(keys) == 0:
            return
        source = _Subset(self._sources[env], keys)
        dataset = self._grain.MapDataset.source(source).map(self._eval_element)
        options = self._grain.ReadOptions(
            num_threads=self._num_workers, prefetch_buffer_size=2 * batch_size
        )
        yield from dataset.to_iter_dataset(options).batch(batch_size)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _resolve_root(name: str, data_dir: str | None) -> tuple[str, str, tuple[str, ...] | None]:
    """``(dataset name, folder, expected domains)`` of a known name or a folder path."""
    known = {key.lower(): key for key in DOMAINBED_DATASETS}
    canonical = known.get(name.lower())
    if canonical is not None and data_dir is None:
        raise ValueError(f"dataset {canonical} is read from disk: pass data_dir")
    if canonical is not None:
        assert data_dir is not None
        candidates = [os.path.join(data_dir, canonical)]
        folder = _DOMAINBED_FOLDERS[canonical]
        if folder != canonical:
            candidates.append(os.path.join(data_dir, folder))
        for candidate in candidates:
            if os.path.isdir(candidate):
                return canonical, candidate, DOMAINBED_DATASETS[canonical]
        domains = DOMAINBED_DATASETS[canonical]
        raise FileNotFoundError(
            f"{canonical} not found: no folder {' or '.join(map(repr, candidates))}. "
            f"Download it with `python -m experiments.download --data_dir {data_dir} "
            f"--dataset {canonical}`, or lay it out as "
            f"{candidates[-1]}/<domain>/<class>/<image> with domains {list(domains)}"
        )
    candidates = [name] if data_dir is None else [name, os.path.join(data_dir, name)]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return os.path.basename(os.path.normpath(candidate)), candidate, None
    raise FileNotFoundError(
        f"unknown dataset {name!r}: neither one of {sorted(DOMAINBED_DATASETS)} nor a folder "
        f"(looked for {' and '.join(map(repr, candidates))}); {_layout_help(name)}"
    )


def load_folder_dataset(
    name: str,
    data_dir: str | None,
    *,
    test_envs: Sequence[int],
    holdout_fraction: float,
    trial_seed: int,
    batch_size: int,
    seed: int,
    augment: bool = True,
    resolution: int = 224,
    fast_decode: bool = True,
    num_workers: int | None = None,
    cache_dir: str | None = None,
) -> FolderDataset:
    """A DomainBed image dataset from ``<data_dir>/<name>/<domain>/<class>/<image>``.

    Args:
        name: a key of :data:`DOMAINBED_DATASETS` (case-insensitive), or a folder (a
            path, or a name under ``data_dir``) with that layout; its domains are then
            its sorted sub-folders.
        data_dir: the folder holding the datasets (may be None when ``name`` is a path).
        test_envs: environments left out of training.
        holdout_fraction: fraction of each environment held out as its ``out`` split.
        trial_seed: seeds the ``in``/``out`` splits (DomainBed's ``trial_seed``).
        batch_size: examples per training environment and step.
        seed: seeds minibatch order and augmentation.
        augment: DomainBed's ``data_augmentation``: augment training minibatches.
        resolution: image side (DomainBed: 224); small values make quick tests.
        fast_decode: decode JPEGs at a reduced DCT scale where the output keeps at
            least ``resolution`` pixels a side (much faster on large photos).
        num_workers: decoding threads (default: the number of CPUs).
        cache_dir: where the ArrayRecord copies live (default ``<data_dir>/.tfds_cache``,
            or ``~/.cache/corgrad_jax/folder_datasets`` if ``data_dir`` is None or
            read-only).

    Returns:
        A :class:`FolderDataset` (an ``EnvironmentSplits``).

    Raises:
        FileNotFoundError: when the dataset folder does not exist.
        ValueError: for a malformed layout (missing or empty domains, class folders
            that differ across domains), an image that does not decode (naming the
            file), or bad arguments.
    """
    if batch_size <= 0 or resolution <= 0:
        raise ValueError(
            f"batch_size and resolution must be positive, got {batch_size} and {resolution}"
        )
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    dataset_name, root, expected = _resolve_root(name, data_dir)
    layout = _scan(root, expected)
    bad_envs = [env for env in test_envs if not 0 <= env < len(layout.environments)]
    if bad_envs:
        raise ValueError(
            f"test_envs {bad_envs} out of range for {len(layout.environments)} environments "
            f"{list(layout.environments)}"
        )
    if len(set(test_envs)) >= len(layout.environments):
        raise ValueError(f"test_envs {list(test_envs)} leave no training environment")
    workers = num_workers or os.cpu_count() or 1
    version_dir = _ensure_cache(
        layout, dataset_name, cache_dir or _default_cache_root(data_dir), workers
    )

    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(version_dir)
    splits = builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})
    sources = [splits[f"env{index}"] for index in range(len(layout.environments))]
    return FolderDataset(
        name=dataset_name,
        layout=layout,
        sources=sources,
        test_envs=tuple(test_envs),
        holdout_fraction=holdout_fraction,
        trial_seed=trial_seed,
        batch_size=batch_size,
        seed=seed,
        augment=augment,
        resolution=resolution,
        fast_decode=fast_decode,
        num_workers=workers,
    )
