"""The ArrayRecord copy of an image folder: built once, named by the folder's fingerprint.

A tensorflow-datasets ``GeneratorBasedBuilder`` writes the encoded image bytes (checked
to decode) with their labels into ArrayRecord files, one split per domain
(``env<i>``), in a cache folder named after the dataset folder and a fingerprint of its
file list, sizes and modification times (:func:`experiments.data.folder_layout.scan`).
A changed folder gets a new cache and the stale one is removed. A file lock lets
several processes share one cache; an interrupted build is redone. TensorFlow is never
imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent import futures
from typing import Any

from experiments.data.folder_layout import Layout
from experiments.data.images import decode_image

_log = logging.getLogger(__name__)

_BUILDER_VERSION = "1.0.0"
_MANIFEST = "layout.json"


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


def _make_builder(layout: Layout, data_dir: str, num_workers: int) -> Any:
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


def default_cache_root(data_dir: str | None) -> str:
    """``<data_dir>/.tfds_cache`` if writable, else a folder under ``~/.cache``."""
    if data_dir is not None and os.access(data_dir, os.W_OK):
        return os.path.join(data_dir, ".tfds_cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "corgrad_jax", "folder_datasets")


def ensure_cache(layout: Layout, name: str, cache_root: str, num_workers: int) -> str:
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
