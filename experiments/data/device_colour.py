"""Colour operations of DomainBed's augmentation as JAX functions of float RGB pixels in
[0, 255] (``(..., 3)``), for :mod:`experiments.data.device_images`: torchvision's
``ColorJitter`` adjustments with PIL's formulas (``ImageEnhance`` blends, HSV hue
rotation), ``RandomGrayscale``'s conversion and ImageNet normalisation.

PIL rounds (or truncates) to uint8 after every operation; these stay in float and
clip to [0, 255]; the luma is ``0.299 R + 0.587 G + 0.114 B`` unrounded.

Example:
  >>> import jax.numpy as jnp
  >>> pixel = jnp.array([[200.0, 100.0, 50.0]])
  >>> adjust_brightness(pixel, 1.5).tolist(), round(float(luma(pixel)[0]), 3)
  ([[255.0, 150.0, 75.0]], 124.2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.data.images import IMAGENET_MEAN, IMAGENET_STD

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's convert("L")


def luma(image: jax.Array) -> jax.Array:
    """``0.299 R + 0.587 G + 0.114 B`` of ``(..., 3)`` pixels: ``(...)``."""
    return image[..., 0] * _LUMA[0] + image[..., 1] * _LUMA[1] + image[..., 2] * _LUMA[2]


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
    """PIL's ``ImageEnhance``: ``degenerate + factor * (image - degenerate)``, clipped."""
    return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 255.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """``ImageEnhance.Brightness``: a blend with black."""
    return _blend(jnp.zeros_like(image), image, factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """``ImageEnhance.Contrast``: a blend with the image's mean luma."""
    return _blend(jnp.mean(luma(image)), image, factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """``ImageEnhance.Color``: a blend with the image's luma, per pixel."""
    return _blend(luma(image)[..., None], image, factor)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """RGB in [0, 1] -> HSV in [0, 1] (hue in turns), as ``colorsys.rgb_to_hsv``.

    The hue's sector is chosen by the index of the largest channel, never by comparing
    a channel with the maximum for equality: XLA may compute the two in different
    fusions, one rounding apart, and a failed equality would pick a wrong sector (a
    jitted ``red == value`` did, for a pixel of a saturated image, on one device but
    not on four).
    """
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    largest = jnp.argmax(rgb, axis=-1)
    value = jnp.max(rgb, axis=-1)
    chroma = value - jnp.min(rgb, axis=-1)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    safe = jnp.where(chroma > 0, chroma, 1.0)
    red_c, green_c, blue_c = (value - red) / safe, (value - green) / safe, (value - blue) / safe
    hue = jnp.select(
        [largest == 0, largest == 1],
        [blue_c - green_c, 2.0 + red_c - blue_c],
        4.0 + green_c - red_c,
    )
    hue = jnp.where(chroma > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """HSV in [0, 1] (hue in turns) -> RGB in [0, 1], as ``colorsys.hsv_to_rgb``."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = jnp.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = jnp.mod(sector, 6.0)
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    sectors = [sector == k for k in range(5)]  # sector 5 is the default

    def pick(*by_sector: jax.Array) -> jax.Array:
        return jnp.select(sectors, by_sector[:5], by_sector[5])

    return jnp.stack(
        [
            pick(value, q, p, p, t, value),
            pick(t, value, value, q, p, p),
            pick(p, p, t, value, value, q),
        ],
        axis=-1,
    )


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
    """torchvision's ``adjust_hue``: the HSV hue rotated by ``shift`` turns."""
    hsv = rgb_to_hsv(image / 255.0)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
    return hsv_to_rgb(hsv) * 255.0


def to_grayscale(image: jax.Array) -> jax.Array:
    """``convert("L").convert("RGB")``: the luma in all three channels."""
    return jnp.broadcast_to(luma(image)[..., None], image.shape)


def normalize(image: jax.Array) -> jax.Array:
    """[0, 255] RGB -> float32 with ImageNet's mean and standard deviation."""
    mean = jnp.asarray(IMAGENET_MEAN * 255.0)
    return (image - mean) * jnp.asarray(1.0 / (IMAGENET_STD * 255.0))
