"""The ArrayRecord copy of an image folder: built once, named by the folder's fingerprint.

A tensorflow-datasets ``GeneratorBasedBuilder`` writes every image with its label and
path into ArrayRecord files, one split per domain (``env<i>``), in one of two forms:

* ``pixels<S>`` (the device path): decoded once and resized to a uint8 ``S x S x 3``
  square, stored as its raw bytes (``S * S * 3``, 196,608 for S = 256; ArrayRecord
  compresses each record with zstd) with the original ``(width, height)``
  (:func:`experiments.data.images.stored_pixels`); training reads no JPEG;
* ``encoded`` (the host path): the file's bytes, checked to decode.

The cache folder is named after the dataset folder, the form and a fingerprint of the
folder's file list, sizes and modification times
(:func:`experiments.data.folder_layout.scan`, which includes
:data:`~experiments.data.folder_layout.CACHE_FORMAT`). A changed folder gets a new
cache and the stale one of the same form is removed (and the caches of format 1, which
held encoded bytes under a name without a form). Building prints a line per domain. A
file lock lets several processes share one cache; an interrupted build is redone.
TensorFlow is never imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import numpy as np

from experiments.data.folder_layout import Layout
from experiments.data.images import decode_image, stored_pixels

_log = logging.getLogger(__name__)

_BUILDER_VERSION = "1.0.0"
_MANIFEST = "layout.json"
_PROGRESS_EVERY = 10_000
"""Besides a line per domain, a line every this many images of a domain."""


def cache_form(stored_size: int | None) -> str:
    """The name of a stored form: ``pixels<S>`` for squares of side S, ``encoded`` for
    the files' bytes (None)."""
    return "encoded" if stored_size is None else f"pixels{stored_size}"


def stored_bytes(stored_size: int) -> int:
    """The bytes of one stored image's pixels (the records add about 100 more: label,
    path, size, framing)."""
    return stored_size * stored_size * 3


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


def _read(root: str, relative: str) -> bytes:
    path = os.path.join(root, relative)
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def _stored_example(root: str, relative: str, stored_size: int | None) -> dict[str, Any]:
    """The stored fields of one image (its label and path are added by the caller)."""
    if stored_size is None:
        return {"image": _read_checked(root, relative)}
    pixels, size = stored_pixels(_read(root, relative), os.path.join(root, relative),
                                 stored_size)
    return {"pixels": pixels, "size": np.asarray(size, np.int32)}


def _make_builder(
    layout: Layout,
    data_dir: str,
    num_workers: int,
    stored_size: int | None,
    progress: Callable[[str], None],
) -> Any:
    """A ``GeneratorBasedBuilder`` writing ``layout``'s images, one split per domain."""
    import tensorflow_datasets as tfds

    if stored_size is None:
        image_features = {"image": tfds.features.Image(shape=(None, None, 3))}
    else:
        image_features = {
            "pixels": tfds.features.Tensor(
                shape=(stored_size, stored_size, 3),
                dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES,  # raw bytes, read without a copy
            ),
            "size": tfds.features.Tensor(shape=(2,), dtype=np.int32),  # (width, height)
        }
    form = cache_form(stored_size)
    num_domains = len(layout.environments)

    class _DomainBedFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Images of a DomainBed-style folder, split ``env<i>`` per domain."""

        name = "domainbed_folder"
        VERSION = tfds.core.Version(_BUILDER_VERSION)
        # No source files or checksums to look up (and importlib.resources cannot
        # locate the package under every kind of install).
        code_path = None

        def _info(self) -> Any:
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    f"Images of {layout.root} ({form}, fingerprint {layout.fingerprint})."
                ),
                features=tfds.features.FeaturesDict(
                    {
                        **image_features,
                        "label": tfds.features.ClassLabel(names=list(layout.classes)),
                        "path": tfds.features.Text(),
                    }
                ),
                disable_shuffling=True,  # Records keep the ImageFolder order.
            )

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            del dl_manager
            return {f"env{index}": self._generate_examples(index) for index in range(num_domains)}

        def _generate_examples(self, environment: int) -> Iterator[tuple[int, dict[str, Any]]]:
            files = layout.files[environment]
            labels = layout.labels[environment]
            domain = f"domain {environment + 1}/{num_domains} {layout.environments[environment]!r}"
            started = time.perf_counter()
            chunk = 256  # Bounded read-ahead: never the whole domain in memory.
            with futures.ThreadPoolExecutor(num_workers) as pool:
                for start in range(0, len(files), chunk):
                    names = files[start : start + chunk]
                    stored = pool.map(
                        lambda name: _stored_example(layout.root, name, stored_size), names
                    )
                    for offset, (name, fields) in enumerate(zip(names, stored, strict=True)):
                        index = start + offset
                        yield index, {**fields, "label": labels[index], "path": name}
                    done = start + len(names)
                    if done % _PROGRESS_EVERY < chunk and done < len(files):
                        progress(f"  {domain}: {done:,} of {len(files):,} images")
            progress(
                f"  {domain}: {len(files):,} images in {time.perf_counter() - started:.1f} s"
            )

    return _DomainBedFolder(data_dir=data_dir, file_format="array_record")


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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


def default_cache_root(data_dir: str | None) -> str:
    """``<data_dir>/.tfds_cache`` if writable, else a folder under ``~/.cache``."""
    if data_dir is not None and os.access(data_dir, os.W_OK):
        return os.path.join(data_dir, ".tfds_cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "corgrad_jax", "folder_datasets")


def _is_stale(entry_name: str, safe_name: str, form: str) -> bool:
    """Whether cache folder ``entry_name`` is an older one of ``safe_name`` in ``form``
    (``<safe_name>-<form>-<fingerprint>``) or of format 1 (``<safe_name>-<fingerprint>``)."""
    if not entry_name.startswith(f"{safe_name}-"):
        return False
    rest = entry_name[len(safe_name) + 1 :]
    return rest.startswith(f"{form}-") or "-" not in rest


def ensure_cache(
    layout: Layout,
    name: str,
    cache_root: str,
    num_workers: int,
    stored_size: int | None = None,
    progress: Callable[[str], None] = _print_progress,
) -> str:
    """Builds (once) the ArrayRecord cache of ``layout``; returns the builder's data dir.

    Args:
        layout: the folder's images (:func:`~experiments.data.folder_layout.scan`).
        name: the dataset's name (the cache folder's prefix).
        cache_root: where the cache folders live.
        num_workers: threads reading (and decoding) images.
        stored_size: store decoded ``S x S`` uint8 squares; None: the encoded files.
        progress: where the build's progress lines go (default: standard error).
    """
    # One cache per folder (named after it and its absolute path) and form, rebuilt
    # when the folder's fingerprint changes.
    folder_hash = hashlib.sha256(os.path.abspath(layout.root).encode()).hexdigest()[:8]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) + "-" + folder_hash
    form = cache_form(stored_size)
    cache_dir = os.path.join(cache_root, f"{safe_name}-{form}-{layout.fingerprint}")
    manifest_path = os.path.join(cache_dir, _MANIFEST)
    version_dir = os.path.join(cache_dir, "domainbed_folder", _BUILDER_VERSION)
    os.makedirs(cache_root, exist_ok=True)
    with _file_lock(os.path.join(cache_root, f".{safe_name}.lock")):
        if not (os.path.exists(manifest_path) and os.path.isdir(version_dir)):
            if os.path.exists(cache_dir):
                shutil.rmtree(cache_dir)  # An interrupted build.
            total = sum(len(files) for files in layout.files)
            progress(f"building the {form} cache of {name} ({total:,} images) in {cache_dir}")
            started = time.perf_counter()
            builder = _make_builder(layout, cache_dir, num_workers, stored_size, progress)
            builder.download_and_prepare()
            progress(f"built the {form} cache of {name} in {time.perf_counter() - started:.1f} s")
            manifest = {
                "root": layout.root,
                "fingerprint": layout.fingerprint,
                "form": form,
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
                    and _is_stale(entry.name, safe_name, form)
                    and (entry.path != cache_dir)
                ):
                    _log.info("removing stale cache %s", entry.path)
                    shutil.rmtree(entry.path, ignore_errors=True)
    return version_dir
