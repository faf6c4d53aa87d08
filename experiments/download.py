"""Downloads DomainBed's image datasets and lays them out for :mod:`experiments.data.folder`.

The sources and the resulting folders are DomainBed's (``domainbed/scripts/download.py``)::

    <data_dir>/PACS/{art_painting,cartoon,photo,sketch}/<class>/<image>
    <data_dir>/VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/<class>/<image>
    <data_dir>/office_home/{Art,Clipart,Product,Real World}/<class>/<image>
    <data_dir>/terra_incognita/location_{100,38,43,46}/<class>/<image>
    <data_dir>/domain_net/{clipart,infograph,painting,quickdraw,real,sketch}/<class>/<image>

Usage::

    python -m experiments.download --data_dir data --dataset PACS VLCS

Each dataset is fetched and unpacked in a staging folder ``<data_dir>/.staging-<name>``
and moved into place at the end, so an interrupted download leaves no half-made
dataset folder (run it again to start over); a dataset whose folder is already there
is skipped. Unpacking and layout (:func:`extract_archive`, :func:`layout_pacs`, ...)
are separate from fetching, and every ``download_*`` function takes the ``fetch``
function to use, so they are tested on local archives. Google Drive files are fetched
with ``gdown`` when installed, otherwise with ``urllib`` through Drive's
direct-download address.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence

from experiments import data

__all__ = [
    "DATASETS",
    "URLS",
    "download_dataset",
    "extract_archive",
    "fetch_url",
    "layout_domain_net",
    "layout_office_home",
    "layout_pacs",
    "layout_terra_incognita",
    "layout_vlcs",
    "main",
]

Fetch = Callable[[str, str], None]
"""``fetch(url, destination_file)``."""

URLS: dict[str, tuple[str, ...]] = {
    # Original: http://www.eecs.qmul.ac.uk/~dl307/project_iccv2017
    "PACS": ("https://drive.google.com/uc?id=1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd",),
    "VLCS": ("https://drive.google.com/uc?id=1skwblH1_okBwxWxmRsp9_qi15hyPpxg8",),
    # Original: http://hemanthdv.org/OfficeHome-Dataset/
    "OfficeHome": ("https://drive.google.com/uc?id=1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC",),
    # Original: https://lila.science/datasets/caltech-camera-traps
    "TerraIncognita": (
        "https://lilablobssc.blob.core.windows.net/caltechcameratraps/eccv_18_all_images_sm.tar.gz",
        "https://lilablobssc.blob.core.windows.net/caltechcameratraps/labels/caltech_camera_traps.json.zip",
    ),
    # Original: http://ai.bu.edu/M3SDA/
    "DomainNet": (
        "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/clipart.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/infograph.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/painting.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/quickdraw.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/real.zip",
        "http://csr.bu.edu/ftp/visda/2019/multi-source/sketch.zip",
    ),
}
"""DomainBed's download addresses of each dataset."""

DOMAIN_NET_DUPLICATES_URL = (
    "https://raw.githubusercontent.com/facebookresearch/DomainBed/main/"
    "domainbed/misc/domain_net_duplicates.txt"
)
"""DomainBed's list of DomainNet images (relative paths) that it deletes as duplicates."""

DATASETS: dict[str, str] = {
    name: spec.folders[0] for name, spec in data.DATASETS.items() if spec.folders
}
"""Dataset name -> folder under ``data_dir`` (DomainBed's folder names, from the registry)."""

TERRA_INCOGNITA_LOCATIONS = ("38", "46", "100", "43")
TERRA_INCOGNITA_CATEGORIES = (
    "bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel",
)  # fmt: skip


# Fetching -----------------------------------------------------------------------------


def _google_drive_id(url: str) -> str | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc != "drive.google.com":
        return None
    return urllib.parse.parse_qs(parsed.query).get("id", [None])[0]


def fetch_url(url: str, destination: str) -> None:
    """Downloads ``url`` to ``destination`` (via ``destination + ".part"``).

    Google Drive addresses go through ``gdown`` when it is installed, otherwise through
    ``drive.usercontent.google.com/download?...&confirm=t`` (no virus-scan page).
    """
    partial = destination + ".part"
    drive_id = _google_drive_id(url)
    if drive_id is not None:
        try:
            import gdown
        except ImportError:
            url = "https://drive.usercontent.google.com/download?" + urllib.parse.urlencode(
                {"id": drive_id, "export": "download", "confirm": "t"}
            )
        else:
            gdown.download(url, partial, quiet=False)
            os.replace(partial, destination)
            return
    print(f"downloading {url}", file=sys.stderr, flush=True)
    request = urllib.request.Request(url, headers={"User-Agent": "corgrad-jax-download"})
    with urllib.request.urlopen(request) as response, open(partial, "wb") as file:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while chunk := response.read(1 << 20):
            file.write(chunk)
            done += len(chunk)
            if total:
                print(
                    f"\r  {done / total:6.1%} of {total / 2**20:.0f} MiB", end="", file=sys.stderr
                )
    print(file=sys.stderr)
    os.replace(partial, destination)


# Unpacking ----------------------------------------------------------------------------


def _inside(root: str, member: str) -> bool:
    root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, member))
    return os.path.commonpath([root, target]) == root


def extract_archive(archive: str, destination: str) -> None:
    """Unpacks a ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` archive into ``destination``.

    Raises:
        ValueError: for another kind of file, or a member that would land outside
            ``destination`` (absolute path, ``..``, or a link pointing out).
    """
    os.makedirs(destination, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if not _inside(destination, name):
                    raise ValueError(f"unsafe path {name!r} in archive {archive}")
            zipped.extractall(destination)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                unsafe = not _inside(destination, member.name) or (
                    (member.issym() or member.islnk())
                    and not _inside(
                        os.path.join(destination, os.path.dirname(member.name)), member.linkname
                    )
                )
                if unsafe:
                    raise ValueError(f"unsafe path {member.name!r} in archive {archive}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(destination)
        return
    raise ValueError(f"{archive} is neither a zip nor a tar archive")


def _find_folder(root: str, name: str) -> str:
    """The folder called ``name`` at or below ``root`` (the shallowest)."""
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if name in dirnames:
            return os.path.join(dirpath, name)
    raise FileNotFoundError(f"no folder {name!r} in the unpacked archive under {root}")


def _find_file(root: str, suffix: str) -> str:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.endswith(suffix):
                return os.path.join(dirpath, filename)
    raise FileNotFoundError(f"no *{suffix} file in the unpacked archive under {root}")


def _move_into_place(source: str, destination: str) -> str:
    if os.path.exists(destination):
        if os.listdir(destination):
            raise FileExistsError(f"{destination} already exists and is not empty")
        os.rmdir(destination)
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    shutil.move(source, destination)
    return destination


# Layouts: the unpacked archives -> <data_dir>/<folder>/<domain>/<class>/<image> ---------


def layout_pacs(extracted: str, data_dir: str) -> str:
    """Moves PACS's ``kfold`` folder to ``<data_dir>/PACS``; returns that folder."""
    return _move_into_place(_find_folder(extracted, "kfold"), os.path.join(data_dir, "PACS"))


def layout_vlcs(extracted: str, data_dir: str) -> str:
    """Moves the unpacked ``VLCS`` folder to ``<data_dir>/VLCS``; returns that folder."""
    return _move_into_place(_find_folder(extracted, "VLCS"), os.path.join(data_dir, "VLCS"))


def layout_office_home(extracted: str, data_dir: str) -> str:
    """Moves ``OfficeHomeDataset_10072016`` to ``<data_dir>/office_home``."""
    source = _find_folder(extracted, "OfficeHomeDataset_10072016")
    return _move_into_place(source, os.path.join(data_dir, "office_home"))


def layout_domain_net(
    extracted: str, data_dir: str, duplicates: Iterable[str] | None = None
) -> str:
    """Moves the six unpacked domains to ``<data_dir>/domain_net``, minus duplicates.

    Args:
        extracted: the folder the six zips were unpacked into.
        data_dir: where ``domain_net`` goes.
        duplicates: paths relative to ``domain_net`` (``clipart/cat/x.jpg``) to delete,
            as DomainBed does with ``domain_net_duplicates.txt``.
    """
    destination = os.path.join(data_dir, "domain_net")
    staged = os.path.join(extracted, "domain_net")
    os.makedirs(staged, exist_ok=True)
    for domain in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"):
        source = _find_folder(extracted, domain)
        if os.path.dirname(source) != staged:
            shutil.move(source, os.path.join(staged, domain))
    removed = 0
    for line in duplicates or ():
        relative = line.strip()
        if relative and _inside(staged, relative):
            try:
                os.remove(os.path.join(staged, relative))
                removed += 1
            except FileNotFoundError:
                pass
    if removed:
        print(f"removed {removed} duplicate DomainNet images", file=sys.stderr)
    return _move_into_place(staged, destination)


def layout_terra_incognita(images: str, annotations: str, data_dir: str) -> str:
    """Sorts Caltech Camera Traps images into ``<data_dir>/terra_incognita``.

    As DomainBed: images of locations 38, 43, 46 and 100 whose annotation is one of the
    ten categories go to ``location_<loc>/<category>/<file_name>`` (an image annotated
    with two categories is copied into both).

    Args:
        images: the folder of the unpacked ``eccv_18_all_images_sm``.
        annotations: the ``caltech_images_*.json`` file.
        data_dir: where ``terra_incognita`` goes.
    """
    with open(annotations) as file:
        data = json.load(file)
    categories = {item["id"]: item["name"] for item in data["categories"]}
    by_image: dict[object, list[str]] = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(
            categories[annotation["category_id"]]
        )
    destination = os.path.join(data_dir, "terra_incognita")
    staged = destination + ".partial"
    shutil.rmtree(staged, ignore_errors=True)
    for image in data["images"]:
        location = str(image["location"])
        if location not in TERRA_INCOGNITA_LOCATIONS:
            continue
        for category in by_image.get(image["id"], ()):
            if category not in TERRA_INCOGNITA_CATEGORIES:
                continue
            target = os.path.join(staged, f"location_{location}", category, image["file_name"])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(images, image["file_name"]), target)
    return _move_into_place(staged, destination)


# Downloading --------------------------------------------------------------------------


def _fetch_and_extract(urls: Sequence[str], staging: str, fetch: Fetch) -> None:
    for url in urls:
        archive = os.path.join(staging, os.path.basename(urllib.parse.urlparse(url).path))
        if _google_drive_id(url):
            archive = os.path.join(staging, "archive-" + _google_drive_id(url))  # type: ignore[operator]
        fetch(url, archive)
        extract_archive(archive, os.path.join(staging, "extracted"))
        os.remove(archive)


def download_dataset(
    name: str, data_dir: str, *, fetch: Fetch | None = None, domain_net_duplicates: bool = True
) -> str:
    """Downloads one dataset and lays it out under ``data_dir``; returns its folder.

    Args:
        name: a key of :data:`DATASETS` (``PACS``, ``VLCS``, ``OfficeHome``,
            ``TerraIncognita``, ``DomainNet``).
        data_dir: the datasets' root folder.
        fetch: ``fetch(url, file)``; None for :func:`fetch_url`.
        domain_net_duplicates: delete the DomainNet duplicates DomainBed lists (the list
            is fetched from DomainBed's repository).

    Raises:
        ValueError: for an unknown name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    fetch = fetch or fetch_url
    destination = os.path.join(data_dir, DATASETS[name])
    if os.path.isdir(destination) and os.listdir(destination):
        print(f"{name}: {destination} exists, skipped", file=sys.stderr)
        return destination
    staging = os.path.join(data_dir, f".staging-{DATASETS[name]}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    extracted = os.path.join(staging, "extracted")
    _fetch_and_extract(URLS[name], staging, fetch)
    if name == "PACS":
        folder = layout_pacs(extracted, data_dir)
    elif name == "VLCS":
        folder = layout_vlcs(extracted, data_dir)
    elif name == "OfficeHome":
        folder = layout_office_home(extracted, data_dir)
    elif name == "TerraIncognita":
        folder = layout_terra_incognita(
            _find_folder(extracted, "eccv_18_all_images_sm"),
            _find_file(extracted, ".json"),
            data_dir,
        )
    else:
        duplicates: list[str] = []
        if domain_net_duplicates:
            listing = os.path.join(staging, "domain_net_duplicates.txt")
            fetch(DOMAIN_NET_DUPLICATES_URL, listing)
            with open(listing) as file:
                duplicates = file.read().splitlines()
        folder = layout_domain_net(extracted, data_dir, duplicates)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"{name}: ready in {folder}", file=sys.stderr)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m experiments.download --data_dir DIR [--dataset ...]``."""
    parser = argparse.ArgumentParser(description="Download DomainBed's image datasets.")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument(
        "--dataset",
        nargs="+",
        choices=sorted(DATASETS),
        default=["PACS", "VLCS", "OfficeHome", "TerraIncognita"],
        help="datasets to fetch (default: all but DomainNet, which is about 20 GB)",
    )
    parser.add_argument(
        "--keep_domain_net_duplicates",
        action="store_true",
        help="do not delete the DomainNet images DomainBed lists as duplicates",
    )
    args = parser.parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    for name in args.dataset:
        download_dataset(
            name, args.data_dir, domain_net_duplicates=not args.keep_domain_net_duplicates
        )


if __name__ == "__main__":
    main()
