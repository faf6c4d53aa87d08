"""Tests of the folder datasets (:mod:`experiments.data.folder`, its layout, cache and
image transforms) on tiny image trees written in ``tmp_path``.

The main tree has four domains and three classes. In the PNG domains every image is a
constant colour that encodes its class (red channel) and a unique id (green channel),
at the evaluation resolution, so an un-augmented batch tells exactly which files it
holds; the ``gamma`` domain holds JPEGs of another size (resized on load).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

from experiments.data import DATASETS, folder, get_dataset_spec, images
from experiments.data.folder import load_folder_dataset
from experiments.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_image,
    decode_image,
    eval_transform,
)

DOMAINS = ("alpha", "beta", "delta", "gamma")  # sorted, as the loader lists them
CLASSES = ("cat", "dog", "fish")
PER_CLASS = 5
RESOLUTION = 16
JPEG_DOMAIN = "gamma"


def _red(label: int) -> int:
    return 40 + 80 * label


def _pixel(label: int, image_id: int) -> tuple[int, int, int]:
    return (_red(label), image_id, 200)


def _write_tree(root: str, domains: tuple[str, ...] = DOMAINS) -> dict[str, list[int]]:
    """Writes the tree; returns, per domain, the image ids in ImageFolder order."""
    ids: dict[str, list[int]] = {}
    image_id = 0
    for domain in domains:
        ids[domain] = []
        for label, class_name in enumerate(CLASSES):
            os.makedirs(os.path.join(root, domain, class_name), exist_ok=True)
            for index in range(PER_CLASS):
                pixel = np.array(_pixel(label, image_id), np.uint8)
                if domain == JPEG_DOMAIN:
                    image = Image.fromarray(np.broadcast_to(pixel, (20, 24, 3)).copy())
                    image.save(os.path.join(root, domain, class_name, f"{index}.jpg"), quality=95)
                else:
                    image = Image.fromarray(np.broadcast_to(pixel, (RESOLUTION,) * 2 + (3,)).copy())
                    image.save(os.path.join(root, domain, class_name, f"{index}.png"))
                ids[domain].append(image_id)
                image_id += 1
    return ids


def _pixels(x: np.ndarray) -> np.ndarray:
    """Normalised images ``(..., H, W, 3)`` -> their mean uint8-scale RGB ``(..., 3)``."""
    return (x * IMAGENET_STD + IMAGENET_MEAN).mean(axis=(-3, -2)) * 255.0


def _load(data_dir: str, name: str = "toy", **overrides: object) -> folder.FolderDataset:
    kwargs = dict(
        test_envs=[0],
        holdout_fraction=0.2,
        trial_seed=0,
        batch_size=4,
        seed=7,
        augment=False,
        resolution=RESOLUTION,
        num_workers=2,
        cache_dir=os.path.join(data_dir, "cache"),
    )
    kwargs.update(overrides)
    return load_folder_dataset(name, data_dir, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, list[int]]]:
    data_dir = str(tmp_path_factory.mktemp("folder_data"))
    ids = _write_tree(os.path.join(data_dir, "toy"))
    return data_dir, ids


@pytest.fixture(scope="module")
def plain(tree: tuple[str, dict[str, list[int]]]) -> folder.FolderDataset:
    return _load(tree[0])


# Layout, splits, labels -----------------------------------------------------------------


def test_layout_is_read_like_image_folder(plain: folder.FolderDataset) -> None:
    assert plain.name == "toy"
    assert plain.environments == DOMAINS
    assert plain.classes == CLASSES
    assert plain.num_classes == 3
    assert plain.input_shape == (RESOLUTION, RESOLUTION, 3)
    assert plain.train_envs == (1, 2, 3)
    n = len(CLASSES) * PER_CLASS
    for env in range(4):
        inside, held_out = plain.split_keys(env, "in"), plain.split_keys(env, "out")
        assert len(held_out) == int(n * 0.2) == plain.split_size(env, "out")
        assert sorted([*inside, *held_out]) == list(range(n))


def test_splits_follow_domainbed(plain: folder.FolderDataset) -> None:
    """``out`` = first int(n * 0.2) of RandomState(seed_hash(trial_seed, env)).shuffle."""
    from experiments.seeding import seed_hash

    n = len(CLASSES) * PER_CLASS
    for env in range(4):
        keys = list(range(n))
        np.random.RandomState(seed_hash(0, env)).shuffle(keys)
        np.testing.assert_array_equal(plain.split_keys(env, "out"), sorted(keys[: int(n * 0.2)]))


@pytest.mark.parametrize("split", ["in", "out"])
def test_eval_batches_hold_each_example_once_with_its_label(
    plain: folder.FolderDataset, tree: tuple[str, dict[str, list[int]]], split: str
) -> None:
    _, ids = tree
    for env, domain in enumerate(DOMAINS):
        batches = list(plain.eval_batches(env, split, 3))
        assert all(len(b["y"]) == 3 for b in batches[:-1])
        x = np.concatenate([b["x"] for b in batches])
        y = np.concatenate([b["y"] for b in batches])
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape == (plain.split_size(env, split), RESOLUTION, RESOLUTION, 3)
        keys = plain.split_keys(env, split)
        expected_labels = keys // PER_CLASS
        np.testing.assert_array_equal(y, expected_labels)
        rgb = _pixels(x)
        tolerance = 3.0 if domain == JPEG_DOMAIN else 0.01
        np.testing.assert_allclose(rgb[:, 0], [_red(int(label)) for label in y], atol=tolerance)
        np.testing.assert_allclose(rgb[:, 1], np.array(ids[domain])[keys], atol=tolerance)


def test_train_batch_shapes_and_labels(plain: folder.FolderDataset) -> None:
    batch = plain.train_batch(0)
    assert batch["x"].shape == (3, 4, RESOLUTION, RESOLUTION, 3)
    assert batch["x"].dtype == np.float32
    assert batch["y"].shape == (3, 4) and batch["y"].dtype == np.int32
    red = _pixels(batch["x"])[..., 0]  # not augmented: the colour gives the class
    np.testing.assert_allclose(red, np.vectorize(_red)(batch["y"]), atol=3.0)


def test_train_batches_walk_each_in_split_in_epochs(
    plain: folder.FolderDataset, tree: tuple[str, dict[str, list[int]]]
) -> None:
    """Every ``in`` example once per epoch, nothing from ``out``, a new order each epoch."""
    _, ids = tree
    size = plain.split_size(1, "in")  # 12 examples, 3 steps of 4 per epoch
    seen = np.concatenate([plain.train_batch(step)["x"][0] for step in range(2 * size // 4)])
    seen_ids = np.rint(_pixels(seen)[:, 1]).astype(int)
    in_ids = np.array(ids["beta"])[plain.split_keys(1, "in")]
    first, second = seen_ids[:size], seen_ids[size:]
    assert sorted(first) == sorted(in_ids) == sorted(second)
    assert not np.array_equal(first, second)


def test_train_batch_is_a_pure_function_of_seed_and_step(tree: tuple[str, dict]) -> None:
    data_dir, _ = tree
    sequential = _load(data_dir, augment=True)
    batches = [sequential.train_batch(step) for step in range(4)]
    resumed = _load(data_dir, augment=True)  # a fresh instance, jumping around
    for step in (3, 1, 2, 0):
        again = resumed.train_batch(step)
        np.testing.assert_array_equal(again["x"], batches[step]["x"])
        np.testing.assert_array_equal(again["y"], batches[step]["y"])
    assert not np.array_equal(batches[0]["x"], batches[1]["x"])
    other_seed = _load(data_dir, augment=True, seed=8).train_batch(0)
    assert not np.array_equal(other_seed["x"], batches[0]["x"])


def test_train_batch_rows_decode_only_those_rows_of_the_same_batch(
    tree: tuple[str, dict]
) -> None:
    """A process of a multi-host job asks for its rows; augmentation is per element."""
    whole_dataset = _load(tree[0], augment=True)
    wholes = {step: whole_dataset.train_batch(step) for step in (2, 3)}
    parts = _load(tree[0], augment=True)
    for domains, examples in ((slice(0, 2), slice(None)), (slice(None), slice(2, 4))):
        for step in (2, 3):  # the same rows at the next step keep the decoding thread pool
            part = parts.train_batch(step, domains, examples)
            for key in ("x", "y"):
                np.testing.assert_array_equal(part[key], wholes[step][key][domains, examples])
    with pytest.raises(ValueError, match="empty"):
        parts.train_batch(0, slice(3, 3))


def test_eval_batches_from_start_to_stop_are_that_part_of_the_split(
    plain: folder.FolderDataset,
) -> None:
    whole = np.concatenate([b["y"] for b in plain.eval_batches(2, "in", 5)])
    part = np.concatenate([b["y"] for b in plain.eval_batches(2, "in", 2, start=3, stop=8)])
    np.testing.assert_array_equal(part, whole[3:8])
    assert list(plain.eval_batches(2, "in", 2, start=50)) == []


def test_augmented_batches_differ_from_plain_ones(
    tree: tuple[str, dict], plain: folder.FolderDataset
) -> None:
    augmented = _load(tree[0], augment=True).train_batch(0)
    plain_batch = plain.train_batch(0)
    np.testing.assert_array_equal(augmented["y"], plain_batch["y"])  # same examples
    assert not np.allclose(augmented["x"], plain_batch["x"], atol=0.05)
    low, high = (0 - IMAGENET_MEAN) / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.all(augmented["x"] >= low - 1e-5) and np.all(augmented["x"] <= high + 1e-5)


def test_no_tensorflow(plain: folder.FolderDataset) -> None:
    plain.train_batch(0)
    list(plain.eval_batches(0, "out", 8))
    assert "tensorflow" not in sys.modules


def test_known_name_uses_domainbed_folder_and_order(tmp_path: os.PathLike) -> None:
    data_dir = str(tmp_path)
    domains = DATASETS["OfficeHome"].environments  # "Real World" has a space
    _write_tree(os.path.join(data_dir, "office_home"), domains)
    dataset = _load(data_dir, "OfficeHome", test_envs=[3])
    assert dataset.name == "OfficeHome"
    assert dataset.environments == ("Art", "Clipart", "Product", "Real World")
    assert dataset.train_envs == (0, 1, 2)
    assert dataset.train_batch(0)["x"].shape == (3, 4, RESOLUTION, RESOLUTION, 3)
    assert DATASETS["TerraIncognita"].environments[0] == "location_100"


def test_cache_is_reused_and_rebuilt_when_the_folder_changes(tmp_path: os.PathLike) -> None:
    data_dir = str(tmp_path)
    _write_tree(os.path.join(data_dir, "toy"), ("a", "b", "c"))
    cache = os.path.join(data_dir, "cache")
    first = _load(data_dir)
    caches = sorted(name for name in os.listdir(cache) if not name.startswith("."))
    assert len(caches) == 1, caches
    manifest = os.path.join(cache, caches[0], "layout.json")
    built_at = os.stat(manifest).st_mtime_ns
    _load(data_dir)
    assert os.stat(manifest).st_mtime_ns == built_at  # not rebuilt

    extra = os.path.join(data_dir, "toy", "b", "dog", "extra.png")
    Image.new("RGB", (RESOLUTION, RESOLUTION), _pixel(1, 99)).save(extra)
    second = _load(data_dir)
    assert second.split_size(1, "in") + second.split_size(1, "out") == 3 * PER_CLASS + 1
    assert first.split_size(1, "in") + first.split_size(1, "out") == 3 * PER_CLASS
    new_caches = sorted(name for name in os.listdir(cache) if not name.startswith("."))
    assert len(new_caches) == 1 and new_caches != caches  # the stale one is gone


# Bad data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpeg", "not_an_image"])
def test_corrupt_image_is_named(tmp_path: os.PathLike, kind: str) -> None:
    data_dir = str(tmp_path)
    _write_tree(os.path.join(data_dir, "toy"), ("a", "b", "c"))
    path = os.path.join(data_dir, "toy", "b", "cat", "1.png")
    if kind == "truncated_jpeg":
        os.remove(path)
        path = path.replace(".png", ".jpg")
        _, noise = np.mgrid[0:64, 0 : 64 * 3]
        Image.fromarray((noise * 7 % 256).astype(np.uint8).reshape(64, 64, 3)).save(path)
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(b"<html>404</html>" if kind == "not_an_image" else data[: len(data) // 2])
    name = os.path.join("b", "cat", os.path.basename(path)).replace(".", r"\.")
    with pytest.raises(ValueError, match=rf"cannot decode image .*{name}"):
        _load(data_dir)


def test_class_mismatch_is_named(tmp_path: os.PathLike) -> None:
    data_dir = str(tmp_path)
    _write_tree(os.path.join(data_dir, "toy"), ("a", "b", "c"))
    os.rename(os.path.join(data_dir, "toy", "c", "fish"), os.path.join(data_dir, "toy", "c", "eel"))
    with pytest.raises(ValueError, match=r"domain 'c' lacks \['fish'\] and has extra \['eel'\]"):
        _load(data_dir)


def test_empty_domain_and_empty_class_show_the_layout(tmp_path: os.PathLike) -> None:
    data_dir = str(tmp_path)
    _write_tree(os.path.join(data_dir, "toy"), ("a", "b"))
    os.makedirs(os.path.join(data_dir, "toy", "c"))
    with pytest.raises(ValueError, match=r"domain 'c' .* is empty(.|\n)*<domain>/<class>/<image>"):
        _load(data_dir)
    for class_name in CLASSES:
        os.makedirs(os.path.join(data_dir, "toy", "c", class_name))
    with pytest.raises(ValueError, match=r"c/cat' has no images"):
        _load(data_dir)


def test_wrong_root_shows_the_layout(tmp_path: os.PathLike) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'nowhere'(.|\n)*<domain>/<class>"):
        _load(str(tmp_path), "nowhere")
    with pytest.raises(FileNotFoundError, match=r"PACS not found(.|\n)*experiments.download"):
        _load(str(tmp_path), "PACS")


def test_known_dataset_with_a_missing_domain(tmp_path: os.PathLike) -> None:
    _write_tree(os.path.join(str(tmp_path), "PACS"), ("art_painting", "cartoon", "photo"))
    with pytest.raises(ValueError, match=r"missing \['sketch'\]"):
        _load(str(tmp_path), "PACS")


def test_a_path_needs_no_data_dir(tree: tuple[str, dict]) -> None:
    data_dir, _ = tree
    kwargs = dict(test_envs=[0], holdout_fraction=0.2, trial_seed=0, batch_size=2, seed=0)
    dataset = load_folder_dataset(
        os.path.join(data_dir, "toy"),
        None,
        resolution=8,
        cache_dir=os.path.join(data_dir, "cache"),
        **kwargs,  # type: ignore[arg-type]
    )
    assert dataset.name == "toy" and dataset.train_batch(0)["x"].shape == (3, 2, 8, 8, 3)
    with pytest.raises(ValueError, match="pass data_dir"):
        load_folder_dataset("PACS", None, **kwargs)  # type: ignore[arg-type]


def test_bad_arguments(tree: tuple[str, dict]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        _load(tree[0], test_envs=[4])
    with pytest.raises(ValueError, match="holdout_fraction"):
        _load(tree[0], holdout_fraction=1.0)


# Image transforms ---------------------------------------------------------------------------


def _smooth_jpeg(width: int, height: int) -> bytes:
    import io

    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_decode_image_converts_every_mode_to_rgb(mode: str) -> None:
    import io

    buffer = io.BytesIO()
    image = Image.new("RGB", (9, 7), (10, 120, 250)).convert(mode)
    image.save(buffer, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    decoded = decode_image(buffer.getvalue(), "x")
    assert decoded.mode == "RGB" and decoded.size == (9, 7)


def test_eval_transform_normalises_like_torchvision() -> None:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), (255, 0, 128)).save(buffer, "PNG")
    x = eval_transform(buffer.getvalue(), "x", 4)
    expected = (np.array([1.0, 0.0, 128 / 255]) - IMAGENET_MEAN) / IMAGENET_STD
    assert x.shape == (4, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), rtol=1e-5, atol=1e-5)


def test_augment_image_is_deterministic_given_the_rng() -> None:
    data = _smooth_jpeg(64, 48)
    first = augment_image(data, "x", 32, np.random.default_rng(3))
    again = augment_image(data, "x", 32, np.random.default_rng(3))
    other = augment_image(data, "x", 32, np.random.default_rng(4))
    assert first.shape == (32, 32, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_fast_decode_crops_the_same_region() -> None:
    """A 1/4-scale JPEG decode must map the crop box like the full decode."""
    data = _smooth_jpeg(512, 384)
    for seed in range(5):
        fast = augment_image(data, "x", 32, np.random.default_rng(seed), fast_decode=True)
        full = augment_image(data, "x", 32, np.random.default_rng(seed), fast_decode=False)
        assert np.abs(fast - full).mean() < 0.05, seed


def test_random_resized_crop_box_stays_in_range() -> None:
    rng = np.random.default_rng(0)
    for width, height in ((100, 100), (300, 80), (20, 200)):
        for _ in range(200):
            left, top, crop_w, crop_h = images._random_resized_crop_box(
                width, height, rng, (0.7, 1.0)
            )
            assert 0 <= left and left + crop_w <= width and 0 <= top and top + crop_h <= height
            if (width, height) == (100, 100):
                assert 0.66 <= crop_w * crop_h / (width * height) <= 1.0
                assert 3 / 4 - 0.05 <= crop_w / crop_h <= 4 / 3 + 0.05


# End to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_resnet18_end_to_end(
    tmp_path: os.PathLike, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``experiments.train`` on a folder dataset: a narrow ResNet-18 at 32x32, CorGrad.

    The trainer has no knob for the ResNet width or the image resolution, so both are
    narrowed by patching the constructors it looks up at call time.
    """
    import json

    from experiments import train
    from experiments.models import resnet
    from experiments.training import loop

    data_dir = str(tmp_path / "data")
    _write_tree(os.path.join(data_dir, "toy"), ("a", "b", "c"))
    built: list[object] = []

    def narrow_resnet(*args: object, **kwargs: object) -> resnet.ResNet18:
        built.append(resnet_class(*args, **{**kwargs, "width": 4}))
        return built[-1]  # type: ignore[return-value]

    def small_images(*args: object, **kwargs: object) -> folder.FolderDataset:
        built.append(load_folder_dataset(*args, **{**kwargs, "resolution": 32}))
        return built[-1]  # type: ignore[return-value]

    resnet_class = resnet.ResNet18
    monkeypatch.setattr(resnet, "ResNet18", narrow_resnet)
    monkeypatch.setattr(folder, "load_folder_dataset", small_images)
    loop.model_and_optimizer.cache_clear()
    output_dir = str(tmp_path / "run")
    argv = [
        "--dataset", os.path.join(data_dir, "toy"), "--data_dir", data_dir,
        "--algorithm", "corgrad", "--test_envs", "0", "--steps", "3",
        "--checkpoint_freq", "2", "--output_dir", output_dir,
        "--hparams", json.dumps({"batch_size": 4}),
    ]  # fmt: skip
    try:
        assert train.main(argv) == 0
    finally:
        loop.model_and_optimizer.cache_clear()
    with open(os.path.join(output_dir, "results.jsonl")) as file:
        records = [json.loads(line) for line in file]
    assert [record["step"] for record in records] == [0, 2]
    assert records[-1]["environments"] == ["a", "b", "c"]
    for env in range(3):
        for split in ("in", "out"):
            assert 0.0 <= records[-1][f"env{env}_{split}_acc"] <= 1.0
    assert np.isfinite(records[-1]["loss"])
    dataset, model = built
    assert dataset.input_shape == (32, 32, 3) and model.width == 4  # the patches took effect
    capsys.readouterr()


def test_the_entry_of_a_folder_lists_what_loading_finds_without_reading_images(
    tree: tuple[str, dict], plain: folder.FolderDataset
) -> None:
    shape = get_dataset_spec("toy", tree[0])
    assert (shape.name, shape.environments, shape.num_classes, shape.train_envs((0,))) == (
        plain.name, plain.environments, plain.num_classes, plain.train_envs)
    assert shape.input_shape == (224, 224, 3)  # the trainer's resolution
