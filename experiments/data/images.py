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
