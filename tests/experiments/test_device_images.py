"""Tests of the device path's image transforms (:mod:`experiments.data.device_images`,
:mod:`experiments.data.device_colour`)
against torchvision's PIL operations (:mod:`experiments.data.images`), the independent
reference, on the same choices: same crop box, flip, jitter factors and order, and
grayscale decision.

Tolerances are mean absolute errors in uint8 units over 224 x 224 outputs of smooth
synthetic photographs with noise (they compress and resample like photographs). PIL
rounds after the resize and truncates after every blend (about 0.5 units each) and
keeps hue in 8 bits; the device path stays in float32. Measured: one resize 0.3, one
blend 0.4-0.55, grayscale 0.25, hue 0.5-1.3, the whole augmentation 1.5-2.1 (on the
stored square), 1.6-1.8 from a stored square against PIL on the original JPEG.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parallel_helpers import ROOT, environment
from PIL import Image, ImageEnhance, ImageFilter

from experiments import models, train
from experiments import run_dir as outputs
from experiments.data import device_colour, device_images, folder, images
from experiments.data.device_images import DeviceTransform
from experiments.data.folder import load_folder_dataset
from experiments.data.images import Augmentation
from experiments.training import TrainConfig
from experiments.training.loop import model_and_optimizer

RESOLUTION = 224
STORED = 256

RESIZE_TOLERANCE = 0.4
BLEND_TOLERANCE = 0.7
HUE_TOLERANCE = 2.0
AUGMENTATION_TOLERANCE = 2.5
FROM_ORIGINAL_TOLERANCE = 3.0
EVALUATION_TOLERANCE = 1.0


def _photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Blurred random blobs with +-6 of noise, uint8 ``(height, width, 3)``."""
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((width, height), Image.BICUBIC)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 80))
    noise = rng.integers(-6, 7, (height, width, 3))
    return np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _error(reference: Image.Image | np.ndarray, device: jax.Array) -> float:
    """Mean absolute difference in uint8 units."""
    return float(np.abs(np.asarray(reference, np.float32) - np.asarray(device)).mean())


def _on_device(augmentation: Augmentation) -> Augmentation:
    return Augmentation(*(jnp.asarray(field) for field in augmentation))


@pytest.fixture(scope="module")
def squares() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [_photo(rng, STORED, STORED) for _ in range(4)]


# One operation at a time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "box, resolution",
    [
        ((0, 0, STORED, STORED), RESOLUTION),  # shrink 256 -> 224 (antialiased)
        ((20, 30, 180, 200), RESOLUTION),  # enlarge
        ((3.5, 7.25, 240.5, 230.0), RESOLUTION),  # fractional box
        ((0, 0, STORED, STORED), 64),  # shrink 4x: the filter widens
    ],
)
def test_crop_and_resize_is_pil_resize_with_a_box(
    squares: list[np.ndarray], box: tuple[float, ...], resolution: int
) -> None:
    left, top, width, height = box
    for pixels in squares:
        pil = Image.fromarray(pixels).resize(
            (resolution, resolution), Image.BILINEAR, box=(left, top, left + width, top + height)
        )
        device = device_images.crop_and_resize(
            jnp.asarray(pixels, jnp.float32), left, top, width, height, resolution
        )
        assert device.shape == (resolution, resolution, 3)
        assert _error(pil, device) < RESIZE_TOLERANCE
        assert np.abs(np.asarray(pil, np.float32) - np.asarray(device)).max() <= 1.6


_ADJUSTMENTS: dict[str, tuple[Callable, Callable, float]] = {
    "brightness": (lambda image, f: ImageEnhance.Brightness(image).enhance(f),
                   device_colour.adjust_brightness, BLEND_TOLERANCE),
    "contrast": (lambda image, f: ImageEnhance.Contrast(image).enhance(f),
                 device_colour.adjust_contrast, BLEND_TOLERANCE),
    "saturation": (lambda image, f: ImageEnhance.Color(image).enhance(f),
                   device_colour.adjust_saturation, BLEND_TOLERANCE),
    "hue": (images._adjust_hue, device_colour.adjust_hue, HUE_TOLERANCE),
}  # fmt: skip


@pytest.mark.parametrize(
    "name, factor",
    [("brightness", 0.7), ("brightness", 1.3), ("contrast", 0.7), ("contrast", 1.3),
     ("saturation", 0.7), ("saturation", 1.3), ("hue", 0.25), ("hue", -0.3), ("hue", 0.1)],
)  # fmt: skip
def test_colour_adjustment_is_pil(squares: list[np.ndarray], name: str, factor: float) -> None:
    pil_adjust, device_adjust, tolerance = _ADJUSTMENTS[name]
    for pixels in squares:
        pil = pil_adjust(Image.fromarray(pixels), factor)
        device = jax.jit(device_adjust)(jnp.asarray(pixels, jnp.float32), factor)
        assert _error(pil, device) < tolerance, name
        assert _error(pixels, device) > 3 * tolerance  # it did something


def test_grayscale_is_pil_convert_l(squares: list[np.ndarray]) -> None:
    for pixels in squares:
        pil = Image.fromarray(pixels).convert("L").convert("RGB")
        assert _error(pil, device_colour.to_grayscale(jnp.asarray(pixels, jnp.float32))) < 0.35


def test_hsv_round_trip_is_exact_and_agrees_with_colorsys() -> None:
    import colorsys

    rgb = np.random.default_rng(1).uniform(0, 1, (500, 3))
    rgb[:20] = rgb[:20, :1]  # grey pixels: no hue
    hsv = np.asarray(device_colour.rgb_to_hsv(jnp.asarray(rgb, jnp.float32)))
    expected = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in rgb])
    np.testing.assert_allclose(hsv, expected, atol=1e-5)
    back = device_colour.hsv_to_rgb(jnp.asarray(hsv))
    np.testing.assert_allclose(np.asarray(back), rgb, atol=1e-5)


# The whole augmentation -----------------------------------------------------------------------


_jitted_augmentation = jax.jit(device_images.apply_augmentation, static_argnums=4)


def _both(pixels: np.ndarray, augmentation: Augmentation) -> tuple[Image.Image, jax.Array]:
    """PIL's and the device's (jitted) augmentation of ``pixels`` (taken as the original)."""
    height, width = pixels.shape[:2]
    pil = images.apply_augmentation(Image.fromarray(pixels), augmentation, RESOLUTION)
    device = _jitted_augmentation(
        jnp.asarray(pixels), width, height, _on_device(augmentation), RESOLUTION
    )
    return pil, device


def test_the_augmentation_is_pil_on_the_same_choices(squares: list[np.ndarray]) -> None:
    rng = np.random.default_rng(2)
    errors = []
    for index in range(12):
        pixels = squares[index % len(squares)]
        augmentation = images.sample_augmentation(STORED, STORED, rng)
        if index == 0:  # every branch at least once
            augmentation = augmentation._replace(flip=True, grayscale=True)
        pil, device = _both(pixels, augmentation)
        errors.append(_error(pil, device))
        # PIL's 8-bit hue is up to 22 off in a pixel; a wrong hue sector would be 100+.
        assert np.abs(np.asarray(pil, np.float32) - np.asarray(device)).max() < 30
    assert max(errors) < AUGMENTATION_TOLERANCE, errors


STRONG = Augmentation(left=10, top=24, width=230, height=200, flip=True,
                      factors=(1.25, 0.75, 1.3, 0.2), order=(3, 0, 2, 1), grayscale=False)


@pytest.mark.parametrize(
    "broken",
    [
        STRONG._replace(factors=(1.25, 0.75, 1.3, 0.0)),  # no hue shift
        STRONG._replace(factors=(1.25, 0.75, 1.3, -0.2)),  # hue the other way
        STRONG._replace(factors=(1.25, 0.75, 1.0, 0.2)),  # no saturation change
        STRONG._replace(factors=(1.0, 0.75, 1.3, 0.2)),  # no brightness change
        STRONG._replace(order=(0, 1, 2, 3)),  # another order
        STRONG._replace(flip=False),
        STRONG._replace(grayscale=True),
        STRONG._replace(left=18),  # the box 8 pixels to the right
    ],
)
def test_the_tolerance_sees_one_wrong_choice(
    squares: list[np.ndarray], broken: Augmentation
) -> None:
    """What a broken step of the device path would do: far beyond the tolerance."""
    pixels = squares[0]
    pil, right = _both(pixels, STRONG)
    assert _error(pil, right) < AUGMENTATION_TOLERANCE
    _, wrong = _both(pixels, broken)
    assert _error(pil, wrong) > 1.5 * AUGMENTATION_TOLERANCE


@pytest.mark.parametrize("size", [(800, 600), (227, 227), (300, 500)])
def test_from_the_stored_square_close_to_pil_on_the_original(size: tuple[int, int]) -> None:
    """Resize-before-crop: the stored 256 square against the decoded JPEG."""
    rng = np.random.default_rng(3)
    width, height = size
    for _ in range(3):
        data = _jpeg(_photo(rng, width, height))
        stored, original = images.stored_pixels(data, "x", STORED)
        assert stored.shape == (STORED, STORED, 3) and stored.dtype == np.uint8
        assert original == size
        augmentation = images.sample_augmentation(width, height, rng)
        pil = images.apply_augmentation(images.decode_image(data, "x"), augmentation, RESOLUTION)
        device = device_images.apply_augmentation(
            jnp.asarray(stored), width, height, _on_device(augmentation), RESOLUTION
        )
        assert _error(pil, device) < FROM_ORIGINAL_TOLERANCE

        expected = images.eval_transform(data, "x", RESOLUTION, fast_decode=False)
        evaluated = device_images.resize_batch(jnp.asarray(stored)[None], resolution=RESOLUTION)
        scale = images.IMAGENET_STD * 255.0  # normalised -> uint8 units
        assert np.abs((np.asarray(evaluated[0]) - expected) * scale).mean() < EVALUATION_TOLERANCE


# The random choices ---------------------------------------------------------------------------


def _device_draws(width: int, height: int, count: int) -> Augmentation:
    keys = jax.random.split(jax.random.key(0), count)
    draw = jax.vmap(lambda key: device_images.sample_augmentation(key, width, height))
    return jax.tree.map(np.asarray, draw(keys))


def test_choices_are_drawn_as_torchvision_draws_them() -> None:
    """Against the host's NumPy sampler (torchvision's get_params), 4,000 draws each."""
    count, width, height = 4000, 800, 600
    device = _device_draws(width, height, count)
    rng = np.random.default_rng(0)
    host = [images.sample_augmentation(width, height, rng) for _ in range(count)]
    host_fields = {name: np.array([getattr(draw, name) for draw in host])
                   for name in Augmentation._fields}  # fmt: skip
    for fields in (device._asdict(), host_fields):
        left, top, box_w, box_h = (fields[k] for k in ("left", "top", "width", "height"))
        assert np.all(left >= 0) and np.all(left + box_w <= width)
        assert np.all(top >= 0) and np.all(top + box_h <= height)
        assert np.all(box_w == np.round(box_w)) and np.all(left == np.round(left))
        assert np.all(np.sort(fields["order"], axis=1) == np.arange(4))
    statistics = {
        "area": lambda f: f["width"] * f["height"] / (width * height),
        "log_ratio": lambda f: np.log(f["width"] / f["height"]),
        "left": lambda f: f["left"] / width,
        "flip": lambda f: f["flip"].astype(float),
        "grayscale": lambda f: f["grayscale"].astype(float),
        "brightness": lambda f: f["factors"][:, 0],
        "hue": lambda f: f["factors"][:, 3],
        "first_is_hue": lambda f: (f["order"][:, 0] == 3).astype(float),
    }
    for name, statistic in statistics.items():
        ours, theirs = statistic(device._asdict()), statistic(host_fields)
        standard_error = np.hypot(ours.std(), theirs.std()) / np.sqrt(count)
        assert abs(ours.mean() - theirs.mean()) < 4 * standard_error + 1e-3, name
        assert ours.min() >= theirs.min() - 0.02 and ours.max() <= theirs.max() + 0.02, name


def test_a_box_that_never_fits_falls_back_to_the_central_crop() -> None:
    """A 1000 x 10 strip: no box of 70% of its area and aspect ratio <= 4/3 fits."""
    device = _device_draws(1000, 10, 8)
    host = images.sample_augmentation(1000, 10, np.random.default_rng(0))
    assert (host.left, host.top, host.width, host.height) == (493, 0, 13, 10)
    for name in ("left", "top", "width", "height"):
        assert np.all(getattr(device, name) == getattr(host, name)), name


# Keys: (seed, step, domain, example) --------------------------------------------------------


@pytest.fixture(scope="module")
def stored_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    pixels = np.stack([[_photo(rng, 40, 40) for _ in range(4)] for _ in range(3)])
    sizes = np.broadcast_to(np.array([120, 90], np.int32), (3, 4, 2)).copy()
    return {"x": pixels, "y": np.zeros((3, 4), np.int32), "size": sizes}


def test_device_augmentation_is_a_function_of_seed_step_domain_and_example(
    stored_batch: dict[str, np.ndarray],
) -> None:
    transform = DeviceTransform(resolution=32, stored_size=40, seed=5)
    first = np.asarray(transform.train(stored_batch, 7)["x"])
    assert first.shape == (3, 4, 32, 32, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(transform.train(stored_batch, 7)["x"]), first)
    assert not np.allclose(np.asarray(transform.train(stored_batch, 8)["x"]), first)
    other_seed = DeviceTransform(resolution=32, stored_size=40, seed=6)
    assert not np.allclose(np.asarray(other_seed.train(stored_batch, 7)["x"]), first)
    # Rows of the batch (a process's share) are augmented as in the whole batch.
    part = {key: value[1:3, 2:4] for key, value in stored_batch.items()}
    domain_ids, example_ids = np.arange(1, 3, dtype=np.int32), np.arange(2, 4, dtype=np.int32)
    rows = transform.train(part, 7, domain_ids, example_ids)
    np.testing.assert_allclose(np.asarray(rows["x"]), first[1:3, 2:4], rtol=1e-6, atol=1e-5)
    # The same image in two places is augmented twice, differently.
    same = {**stored_batch, "x": np.broadcast_to(stored_batch["x"][:1, :1], (3, 4, 40, 40, 3))}
    augmented = np.asarray(transform.train(same, 7)["x"]).reshape(12, -1)
    assert len({row.tobytes() for row in augmented}) == 12


def test_a_mesh_of_four_devices_augments_as_one_device(
    stored_batch: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """The trainer's global batch, split (domain, data) = (1, 4) or (3, 1) over virtual
    CPU devices in a fresh process, gives one device's augmentation and stays split."""
    np.savez(tmp_path / "stored.npz", **stored_batch)
    script = textwrap.dedent(f"""
        import numpy as np
        from experiments.data.device_images import DeviceTransform
        from experiments.training.parallel import make_plan

        stored = dict(np.load({str(tmp_path / "stored.npz")!r}))
        transform = DeviceTransform(resolution=32, stored_size=40, seed=5)
        outputs = {{}}
        for devices, domain_parallel in ((4, 1), (3, 3)):
            plan = make_plan(num_domains=3, batch_size=4, num_devices=devices,
                             domain_parallel=domain_parallel)
            batch = plan.global_batch(
                lambda d, e: {{k: v[d, e] for k, v in stored.items()}}, 3, 4)
            x = transform.train(batch, 7)["x"]
            assert x.sharding.is_equivalent_to(plan.batch_sharding, x.ndim), x.sharding
            outputs[f"train{{devices}}"] = np.asarray(x)
            evaluation = plan.global_eval_batch({{"x": stored["x"].reshape(12, 40, 40, 3)}})
            outputs[f"eval{{devices}}"] = np.asarray(transform.eval(evaluation)["x"])
        np.savez({str(tmp_path / "outputs.npz")!r}, **outputs)
    """)
    done = subprocess.run([sys.executable, "-c", script], env=environment(4), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    transform = DeviceTransform(resolution=32, stored_size=40, seed=5)
    single = np.asarray(transform.train(stored_batch, 7)["x"])
    evaluated = np.asarray(transform.eval({"x": stored_batch["x"].reshape(12, 40, 40, 3)})["x"])
    for devices in (4, 3):
        np.testing.assert_allclose(outputs[f"train{devices}"], single, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(outputs[f"eval{devices}"], evaluated, rtol=1e-6, atol=1e-5)


def test_without_augmentation_training_batches_are_resized_like_evaluation(
    stored_batch: dict[str, np.ndarray],
) -> None:
    transform = DeviceTransform(resolution=32, stored_size=40, seed=5, augment=False)
    trained = np.asarray(transform.train(stored_batch, 3)["x"])
    evaluated = np.asarray(transform.eval({"x": stored_batch["x"][0]})["x"])
    np.testing.assert_allclose(trained[0], evaluated, rtol=1e-6, atol=1e-6)


# The cache and the trainer ----------------------------------------------------------------


def _write_folder(root: str, per_class: int = 4, size: tuple[int, int] = (48, 36)) -> None:
    rng = np.random.default_rng(5)
    for domain in ("a", "b", "c"):
        for label, class_name in enumerate(("cat", "dog")):
            os.makedirs(os.path.join(root, domain, class_name))
            for index in range(per_class):
                pixels = _photo(rng, *size)
                pixels[..., 0] = 60 + 120 * label  # the class in the red channel
                Image.fromarray(pixels).save(os.path.join(root, domain, class_name, f"{index}.jpg"))


def _caches(cache: str) -> list[str]:
    return sorted(name for name in os.listdir(cache) if not name.startswith("."))


def test_both_caches_live_side_by_side_and_a_format_1_cache_is_removed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root, cache = str(tmp_path / "toy"), str(tmp_path / "cache")
    _write_folder(root)
    options = dict(test_envs=[0], holdout_fraction=0.25, trial_seed=0, batch_size=2, seed=0,
                   resolution=16, cache_dir=cache)  # fmt: skip
    device = load_folder_dataset(root, None, **options)  # type: ignore[arg-type]
    (name,) = _caches(cache)
    old_format = os.path.join(cache, name.replace("-pixels19-", "-"))  # <name>-<fingerprint>
    os.makedirs(old_format)
    progress = capfd.readouterr().err
    assert "building the pixels19 cache of toy (24 images)" in progress
    for index, domain in enumerate("abc"):
        assert f"domain {index + 1}/3 '{domain}': 8 images in" in progress

    host = load_folder_dataset(root, None, augmentation="host", **options)  # type: ignore[arg-type]
    assert "building the encoded cache of toy" in capfd.readouterr().err
    caches = _caches(cache)
    assert len(caches) == 2 and name in caches and os.path.basename(old_format) not in caches
    assert "-encoded-" in " ".join(caches)
    stored = device.stored_train_batch(0)
    assert stored["x"].dtype == np.uint8 and stored["x"].shape == (2, 2, 19, 19, 3)
    np.testing.assert_array_equal(stored["size"], np.full((2, 2, 2), (48, 36)))
    assert host.device_transform is None and host.train_batch(0)["x"].dtype == np.float32
    load_folder_dataset(root, None, **options)  # type: ignore[arg-type]
    assert "building" not in capfd.readouterr().err  # reused


class _TinyLinear(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@pytest.fixture
def small_folder_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A folder of JPEGs at 16 x 16, and a linear model registered as ``tiny_linear``."""
    root = str(tmp_path / "toy")
    _write_folder(root)
    loader = folder.load_folder_dataset
    monkeypatch.setattr(folder, "load_folder_dataset", lambda *args, **kwargs: loader(
        *args, **{**kwargs, "resolution": 16, "cache_dir": str(tmp_path / "cache")}))
    models.register(models.Model(
        name="tiny_linear",
        build=lambda num_classes, hparams, *, dtype: _TinyLinear(num_classes)))
    model_and_optimizer.cache_clear()
    try:
        yield root
    finally:
        del models.MODELS["tiny_linear"]
        model_and_optimizer.cache_clear()


def _config(root: str, output_dir: Path, **overrides: object) -> TrainConfig:
    values: dict = dict(dataset=root, model="tiny_linear", steps=6, checkpoint_freq=2,
                        hparams={"batch_size": 4}, output_dir=str(output_dir))  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def test_an_interrupted_device_run_resumes_to_the_same_metrics(
    small_folder_runs: str, tmp_path: Path
) -> None:
    def comparable(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "step_time"} for r in records]

    reference = train.run(_config(small_folder_runs, tmp_path / "full"), log=lambda _: None)
    assert reference[-1]["args"]["augmentation"] == "device"
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "full", interrupted)
    (interrupted / outputs.DONE).unlink()
    shutil.rmtree(interrupted / outputs.CHECKPOINTS / "5")
    lines: list[str] = []
    resumed = train.run(_config(small_folder_runs, interrupted), log=lines.append)
    assert "resumed from the checkpoint of step 4" in lines[0]
    assert comparable(resumed) == comparable(reference)
    host = train.run(_config(small_folder_runs, tmp_path / "host", augmentation="host"),
                     log=lambda _: None)  # fmt: skip
    assert "augmentation" not in host[-1]["args"]  # as runs written before the field
    assert comparable(host) != comparable(reference)


def test_the_switch_is_recorded_only_where_it_changes_something(
    small_folder_runs: str, tmp_path: Path
) -> None:
    assert _config(small_folder_runs, tmp_path).run_args()["augmentation"] == "device"
    assert "augmentation" not in _config(small_folder_runs, tmp_path,
                                         augmentation="host").run_args()
    assert "augmentation" not in TrainConfig(dataset="RotatedMNIST").run_args()
    # A run of an image folder written before the switch existed (no "augmentation" in
    # its args.json) is not resumed by the device path: it says which argument differs.
    old = tmp_path / "old"
    old.mkdir()
    args = _config(small_folder_runs, old, augmentation="host").run_args()
    (old / outputs.ARGS).write_text(json.dumps(args))
    with pytest.raises(Exception, match="augmentation 'device' here, None there"):
        train.run(_config(small_folder_runs, old), log=lambda _: None)
