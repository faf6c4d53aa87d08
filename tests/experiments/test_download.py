"""Tests of :mod:`experiments.download` on local archives (no network)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile

import pytest

from experiments import download


def _zip(path: str, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _tar(path: str, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _files(root: str) -> set[str]:
    return {
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
    }


def _local_fetch(archives: dict[str, str]) -> download.Fetch:
    """A ``fetch`` that copies the local archive registered for each URL."""

    def fetch(url: str, destination: str) -> None:
        shutil.copyfile(archives[url], destination)

    return fetch


def test_extract_zip_and_tar(tmp_path: os.PathLike) -> None:
    root = str(tmp_path)
    members = {"top/a/x.jpg": b"1", "top/b/y.png": b"22"}
    download.extract_archive(_zip(os.path.join(root, "a.zip"), members), os.path.join(root, "z"))
    download.extract_archive(_tar(os.path.join(root, "a.tgz"), members), os.path.join(root, "t"))
    assert _files(os.path.join(root, "z")) == _files(os.path.join(root, "t")) == set(members)
    with open(os.path.join(root, "t", "top", "b", "y.png"), "rb") as file:
        assert file.read() == b"22"


@pytest.mark.parametrize("maker", [_zip, _tar])
def test_extract_refuses_paths_outside(tmp_path: os.PathLike, maker: object) -> None:
    archive = maker(os.path.join(str(tmp_path), "evil.arc"), {"../evil.txt": b"x"})  # type: ignore[operator]
    with pytest.raises(ValueError, match="unsafe path"):
        download.extract_archive(archive, os.path.join(str(tmp_path), "out"))
    assert not os.path.exists(os.path.join(str(tmp_path), "evil.txt"))


def test_extract_refuses_other_files(tmp_path: os.PathLike) -> None:
    path = os.path.join(str(tmp_path), "plain.txt")
    with open(path, "w") as file:
        file.write("not an archive")
    with pytest.raises(ValueError, match="neither a zip nor a tar"):
        download.extract_archive(path, str(tmp_path))


def test_download_pacs_from_a_local_zip(tmp_path: os.PathLike) -> None:
    root = str(tmp_path)
    members = {
        f"kfold/{domain}/{cls}/{i}.jpg": b"jpeg"
        for domain in ("art_painting", "cartoon", "photo", "sketch")
        for cls in ("dog", "horse")
        for i in range(2)
    }
    archive = _zip(os.path.join(root, "PACS.zip"), members)
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir)
    fetch = _local_fetch({download.URLS["PACS"][0]: archive})
    folder = download.download_dataset("PACS", data_dir, fetch=fetch)
    assert folder == os.path.join(data_dir, "PACS")
    assert _files(folder) == {name.removeprefix("kfold/") for name in members}
    assert os.listdir(data_dir) == ["PACS"]  # the staging folder is gone
    # A second call leaves the finished dataset alone (and fetches nothing).
    assert download.download_dataset("PACS", data_dir, fetch=_local_fetch({})) == folder


def test_download_vlcs_and_office_home(tmp_path: os.PathLike) -> None:
    root = str(tmp_path)
    vlcs = _tar(os.path.join(root, "VLCS.tar.gz"), {"VLCS/SUN09/car/1.jpg": b"j"})
    office = _zip(
        os.path.join(root, "office_home.zip"),
        {
            "OfficeHomeDataset_10072016/Real World/Alarm_Clock/00001.jpg": b"j",
            "OfficeHomeDataset_10072016/ImageInfo.csv": b"csv",
        },
    )
    fetch = _local_fetch({download.URLS["VLCS"][0]: vlcs, download.URLS["OfficeHome"][0]: office})
    data_dir = os.path.join(root, "data")
    download.download_dataset("VLCS", data_dir, fetch=fetch)
    download.download_dataset("OfficeHome", data_dir, fetch=fetch)
    assert _files(os.path.join(data_dir, "VLCS")) == {"SUN09/car/1.jpg"}
    assert "Real World/Alarm_Clock/00001.jpg" in _files(os.path.join(data_dir, "office_home"))


def test_domain_net_layout_removes_duplicates(tmp_path: os.PathLike) -> None:
    root = str(tmp_path)
    archives = {}
    for url in download.URLS["DomainNet"]:
        domain = os.path.basename(url).removesuffix(".zip")
        members = {f"{domain}/cat/{i}.jpg": b"j" for i in range(2)}
        archives[url] = _zip(os.path.join(root, f"{domain}.zip"), members)
    duplicates = os.path.join(root, "duplicates.txt")
    with open(duplicates, "w") as file:
        file.write("real/cat/1.jpg\nsketch/cat/0.jpg\nnot/there.jpg\n../escape.jpg\n")
    archives[download.DOMAIN_NET_DUPLICATES_URL] = duplicates
    data_dir = os.path.join(root, "data")
    folder = download.download_dataset("DomainNet", data_dir, fetch=_local_fetch(archives))
    files = _files(folder)
    assert len(files) == 12 - 2
    assert "real/cat/0.jpg" in files and "real/cat/1.jpg" not in files
    assert sorted(os.listdir(folder)) == [
        "clipart", "infograph", "painting", "quickdraw", "real", "sketch",
    ]  # fmt: skip


def test_terra_incognita_layout(tmp_path: os.PathLike) -> None:
    root = str(tmp_path)
    images = {f"eccv_18_all_images_sm/img{i}.jpg": bytes([i]) for i in range(5)}
    annotations = {
        "categories": [
            {"id": 1, "name": "bobcat"},
            {"id": 2, "name": "car"},
            {"id": 3, "name": "dog"},
        ],
        "images": [
            {"id": "a", "file_name": "img0.jpg", "location": "38"},
            {"id": "b", "file_name": "img1.jpg", "location": 100},
            {"id": "c", "file_name": "img2.jpg", "location": "7"},  # not a DomainBed location
            {"id": "d", "file_name": "img3.jpg", "location": "46"},  # a category left out
            {"id": "e", "file_name": "img4.jpg", "location": "43"},
        ],
        "annotations": [
            {"image_id": "a", "category_id": 1},
            {"image_id": "b", "category_id": 3},
            {"image_id": "c", "category_id": 1},
            {"image_id": "d", "category_id": 2},
            {"image_id": "e", "category_id": 1},
            {"image_id": "e", "category_id": 3},
        ],
    }
    tar_urls, json_url = download.URLS["TerraIncognita"]
    archives = {
        tar_urls: _tar(os.path.join(root, "images.tar.gz"), images),
        json_url: _zip(
            os.path.join(root, "labels.json.zip"),
            {"caltech_images_20210113.json": json.dumps(annotations).encode()},
        ),
    }
    data_dir = os.path.join(root, "data")
    folder = download.download_dataset("TerraIncognita", data_dir, fetch=_local_fetch(archives))
    assert _files(folder) == {
        "location_38/bobcat/img0.jpg",
        "location_100/dog/img1.jpg",
        "location_43/bobcat/img4.jpg",
        "location_43/dog/img4.jpg",
    }
    with open(os.path.join(folder, "location_100", "dog", "img1.jpg"), "rb") as file:
        assert file.read() == bytes([1])


def test_command_line(tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path)
    vlcs = _tar(os.path.join(root, "VLCS.tar.gz"), {"VLCS/LabelMe/dog/1.jpg": b"j"})
    monkeypatch.setattr(download, "fetch_url", _local_fetch({download.URLS["VLCS"][0]: vlcs}))
    download.main(["--data_dir", os.path.join(root, "data"), "--dataset", "VLCS"])
    assert _files(os.path.join(root, "data", "VLCS")) == {"LabelMe/dog/1.jpg"}


def test_unknown_dataset_and_cli_choices(tmp_path: os.PathLike) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'MNIST'"):
        download.download_dataset("MNIST", str(tmp_path))
    with pytest.raises(SystemExit):
        download.main(["--data_dir", str(tmp_path), "--dataset", "MNIST"])


def test_google_drive_ids() -> None:
    assert (
        download._google_drive_id(download.URLS["PACS"][0]) == "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"
    )
    assert download._google_drive_id(download.URLS["DomainNet"][0]) is None
