"""The layout of an image dataset on disk, as DomainBed reads it: scanning, no image read.

DomainBed's ``MultipleEnvironmentImageFolder`` (one torchvision ``ImageFolder`` per
domain)::

    <data_dir>/<dataset>/<domain>/<class>/<image>     e.g. data/PACS/photo/dog/056_0001.jpg

Domains are the sorted sub-folders of the dataset folder, classes the sorted
sub-folders of a domain (the same in every domain), images every file with an image
extension below a class folder, in sorted order (``os.walk``), as torchvision lists
them. Hidden folders are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)  # fmt: skip
"""torchvision's ``IMG_EXTENSIONS`` (compared case-insensitively)."""

CACHE_FORMAT = 2
"""Part of every fingerprint: bump it to invalidate every cache when the stored format
changes (:mod:`experiments.data.folder_cache`). 1: encoded files only; 2: a form
(``encoded`` or ``pixels<S>``) in the cache's name."""


def layout_help(root: str) -> str:
    return (
        "expected layout:\n"
        f"  {root}/<domain>/<class>/<image>   (e.g. {root}/photo/dog/0001.jpg)\n"
        "with the same class folders in every domain; image extensions: "
        + " ".join(IMAGE_EXTENSIONS)
    )


@dataclasses.dataclass(frozen=True)
class Layout:
    """The images of a dataset folder: per domain, relative paths and labels."""

    root: str
    environments: tuple[str, ...]
    classes: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]  # per environment, relative to root
    labels: tuple[tuple[int, ...], ...]
    fingerprint: str


def subfolders(path: str) -> list[str]:
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


def scan(root: str, expected_domains: tuple[str, ...] | None = None) -> Layout:
    """Lists domains, classes and images of ``root``; raises on a malformed layout."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {root!r} does not exist; {layout_help(root)}")
    environments = tuple(subfolders(root))
    if not environments:
        raise ValueError(f"dataset folder {root!r} has no domain folders; {layout_help(root)}")
    if expected_domains is not None and environments != expected_domains:
        missing = sorted(set(expected_domains) - set(environments))
        extra = sorted(set(environments) - set(expected_domains))
        raise ValueError(
            f"dataset folder {root!r} has domains {list(environments)}, expected "
            f"{list(expected_domains)} (missing {missing}, unexpected {extra}); "
            + layout_help(root)
        )
    classes: tuple[str, ...] | None = None
    first = environments[0]
    files, labels, stats = [], [], []
    for environment in environments:
        domain_dir = os.path.join(root, environment)
        domain_classes = tuple(subfolders(domain_dir))
        if not domain_classes:
            raise ValueError(
                f"domain {environment!r} ({domain_dir}) is empty: no class folders; "
                + layout_help(root)
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
                    + layout_help(root)
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
        json.dumps([CACHE_FORMAT, list(environments), list(classes or ()), stats]).encode()
    ).hexdigest()
    return Layout(
        root=root,
        environments=environments,
        classes=tuple(classes or ()),
        files=tuple(files),
        labels=tuple(labels),
        fingerprint=digest[:16],
    )


def find_folder(name: str, data_dir: str | None) -> str:
    """The folder of a dataset given by path: ``name`` itself, or ``<data_dir>/<name>``.

    Raises:
        FileNotFoundError: neither is a directory.
    """
    candidates = [name] if data_dir is None else [name, os.path.join(data_dir, name)]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(
        f"no folder {' or '.join(map(repr, candidates))}; {layout_help(name)}")


def dataset_root(name: str, folders: Sequence[str], data_dir: str | None) -> str:
    """The folder of a registered dataset: the first of ``<data_dir>/<folder>`` that exists.

    Raises:
        ValueError: no ``data_dir``.
        FileNotFoundError: none exists (the message says how to download it).
    """
    if data_dir is None:
        raise ValueError(f"dataset {name} is read from disk: pass data_dir")
    candidates = [os.path.join(data_dir, folder) for folder in folders]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(
        f"{name} not found: no folder {' or '.join(map(repr, candidates))}. "
        f"Download it with `python -m experiments.download --data_dir {data_dir} "
        f"--dataset {name}`, or lay it out as {candidates[0]}/<domain>/<class>/<image>"
    )


def folder_classes(root: str) -> tuple[tuple[str, ...], int]:
    """``(domains, number of classes)`` of a dataset folder, from folder names only.

    Raises:
        ValueError: the folder has no domain folders.
    """
    domains = tuple(subfolders(root))
    if not domains:
        raise ValueError(f"dataset folder {root!r} has no domain folders; {layout_help(root)}")
    return domains, len(subfolders(os.path.join(root, domains[0])))
