"""DomainBed's image transforms, with the PIL operations torchvision uses.

Training: ``RandomResizedCrop(resolution, scale=(0.7, 1))``, ``RandomHorizontalFlip()``,
``ColorJitter(0.3, 0.3, 0.3, 0.3)``, ``RandomGrayscale(0.1)``, ImageNet normalisation
(:func:`augment_image`). Evaluation: ``Resize((resolution, resolution))`` and
normalisation (:func:`eval_transform`). JPEGs are decoded at a reduced DCT scale when the
crop still has at least ``resolution`` pixels a side (``fast_decode``).
"""

from __future__ import annotations

import io
import math
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageEnhance

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def decode_image(data: bytes, path: str, *, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decodes encoded image bytes into an RGB PIL image.

    Args:
        data: the encoded file (JPEG, PNG, ...).
        path: the file's name, for error messages.
        min_size: if given, a JPEG may be decoded at a reduced DCT scale (1/2, 1/4,
            1/8) that keeps at least ``(width, height)`` pixels; the image's ``info``
            holds ``"draft_scale"`` (decoded pixels per original pixel) and
            ``"original_size"`` (the file's ``(width, height)``).

    Returns:
        The loaded RGB image (palette, grey, CMYK and alpha images are converted as
        torchvision's ``pil_loader`` does, with ``convert("RGB")``).

    Raises:
        ValueError: naming ``path``, when the bytes do not decode.
    """
    try:
        image = Image.open(io.BytesIO(data))
        scale = 1.0
        original_size = image.size
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
    image.info["original_size"] = original_size
    return image


class Augmentation(NamedTuple):
    """The random choices of DomainBed's training augmentation of one image.

    The host path (:func:`augment_image`) draws them with NumPy; the device path
    (:mod:`experiments.data.device_images`) with ``jax.random``, as arrays in the same
    fields. Either path applies given choices, which is how the tests compare them.

    Attributes:
        left, top, width, height: ``RandomResizedCrop``'s box, in pixels of the
            original image.
        flip: mirror left-right (``RandomHorizontalFlip``).
        factors: ``ColorJitter``'s brightness, contrast and saturation factors (in
            ``[0.7, 1.3]``) and hue shift (in ``[-0.3, 0.3]`` turns).
        order: the order of the four adjustments (0 brightness, 1 contrast,
            2 saturation, 3 hue), a permutation.
        grayscale: ``RandomGrayscale``'s choice.
    """

    left: Any
    top: Any
    width: Any
    height: Any
    flip: Any
    factors: Any
    order: Any
    grayscale: Any


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


def sample_augmentation(
    width: int,
    height: int,
    rng: np.random.Generator,
    crop_scale: tuple[float, float] = (0.7, 1.0),
) -> Augmentation:
    """Draws DomainBed's augmentation of a ``width`` x ``height`` image from ``rng``, in
    torchvision's order: crop box, flip, jitter factors, jitter order, grayscale."""
    left, top, crop_w, crop_h = _random_resized_crop_box(width, height, rng, crop_scale)
    flip = bool(rng.uniform() < 0.5)
    factors = (
        rng.uniform(0.7, 1.3),  # brightness
        rng.uniform(0.7, 1.3),  # contrast
        rng.uniform(0.7, 1.3),  # saturation
        rng.uniform(-0.3, 0.3),  # hue
    )
    order = tuple(int(adjustment) for adjustment in rng.permutation(4))
    grayscale = bool(rng.uniform() < 0.1)
    return Augmentation(left, top, crop_w, crop_h, flip, factors, order, grayscale)


def _adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL ``adjust_hue``: rotate the HSV hue channel (uint8, wrapping)."""
    hue, saturation, value = image.convert("HSV").split()
    shifted = np.asarray(hue, dtype=np.uint8) + np.uint8(int(hue_factor * 255) % 256)
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), saturation, value)).convert("RGB")


def _normalize(image: Image.Image) -> np.ndarray:
    """uint8 RGB -> float32 ``(H, W, 3)`` with ImageNet mean and std."""
    pixels = np.asarray(image, dtype=np.float32)
    return (pixels - IMAGENET_MEAN * 255.0) * (1.0 / (IMAGENET_STD * 255.0))


def stored_pixels(data: bytes, path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An image as the device path stores it: ``Resize((size, size))``, uint8.

    The whole image is resized to a square (its aspect ratio is not kept: the device
    path maps every crop box from the original's pixels to the square's, so the crop
    covers the same part of the picture) with PIL's bilinear filter, antialiased when
    shrinking, as ``Resize`` does. JPEGs are first decoded at the smallest DCT scale that
    keeps ``size`` pixels a side.

    Returns:
        ``(pixels, (width, height))``: uint8 ``(size, size, 3)`` and the original size.

    Raises:
        ValueError: naming ``path``, when the bytes do not decode.
    """
    image = decode_image(data, path, min_size=(size, size))
    pixels = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return pixels, image.info["original_size"]


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
    augmentation = sample_augmentation(width, height, rng, crop_scale)
    min_size = None
    if fast_decode:
        min_size = (
            math.ceil(width * resolution / augmentation.width),
            math.ceil(height * resolution / augmentation.height),
        )
    image = decode_image(data, path, min_size=min_size)
    return _normalize(apply_augmentation(image, augmentation, resolution))


def apply_augmentation(
    image: Image.Image, augmentation: Augmentation, resolution: int
) -> Image.Image:
    """Applies drawn choices to a decoded image with torchvision's PIL operations.

    Args:
        image: the RGB image, possibly decoded at a reduced scale (its
            ``info["draft_scale"]``, 1 if absent, maps the box to its pixels).
        augmentation: the choices, its box in pixels of the original image.
        resolution: the output side.

    Returns:
        The uint8 RGB image, ``resolution`` x ``resolution``, before normalisation.
    """
    scale = image.info.get("draft_scale", 1.0)
    left, top = augmentation.left, augmentation.top
    right, bottom = left + augmentation.width, top + augmentation.height
    box = (left * scale, top * scale, right * scale, bottom * scale)
    image = image.resize((resolution, resolution), Image.BILINEAR, box=box)
    if augmentation.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    brightness, contrast, saturation, hue = augmentation.factors
    for adjustment in augmentation.order:
        if adjustment == 0:
            image = ImageEnhance.Brightness(image).enhance(brightness)
        elif adjustment == 1:
            image = ImageEnhance.Contrast(image).enhance(contrast)
        elif adjustment == 2:
            image = ImageEnhance.Color(image).enhance(saturation)
        else:
            image = _adjust_hue(image, hue)
    if augmentation.grayscale:
        image = image.convert("L").convert("RGB")
    return image
