"""DomainBed's image transforms as batched JAX functions, run on the accelerator.

The device path (``augmentation="device"``, the default): the ArrayRecord cache holds
every image decoded once and resized to a uint8 square of side
:func:`default_stored_size` (256 for 224 x 224 training), with its original
``(width, height)`` (:func:`experiments.data.images.stored_pixels`). The host only
gathers those bytes into a uint8 batch; the device does the rest, jitted and batched:

* training (:func:`augment_batch`): ``RandomResizedCrop(resolution, scale=(0.7, 1),
  ratio=(3/4, 4/3))`` drawn in the original image's pixels and mapped onto the stored
  square, ``RandomHorizontalFlip()``, ``ColorJitter(0.3, 0.3, 0.3, 0.3)`` (brightness,
  contrast, saturation, hue in a random order), ``RandomGrayscale(0.1)``, ImageNet
  normalisation;
* evaluation (:func:`resize_batch`): ``Resize((resolution, resolution))``, ImageNet
  normalisation.

The colour operations live in :mod:`experiments.data.device_colour`.

Randomness: example ``b`` of training domain ``d`` at step ``t`` uses the key
``fold_in(fold_in(fold_in(key(seed_hash("device augmentation", seed)), t), d), b)``
(threefry), so a step's augmentation is a pure function of (seed, step, domain,
example): a resumed run augments exactly as an uninterrupted one, on any number of
devices.

Differences from the host path (torchvision's PIL operations on the decoded file,
:mod:`experiments.data.images`), measured in ``tests/experiments/test_device_images.py``:

* **resize before crop**: the crop is cut from the stored square, not from the
  original, so it holds at most ``stored_size`` pixels a side (the original's detail
  beyond that is gone; a crop is upsampled when it covers fewer than ``resolution``
  stored pixels); evaluation resizes the stored square to ``resolution`` (two
  bilinear resamplings instead of one);
* **interpolation**: bilinear with PIL's antialiasing rule (a triangle filter widened
  by the shrink factor when shrinking, the same kernel as PIL's ``BILINEAR``), via
  ``jax.image.scale_and_translate``;
* **no intermediate rounding**: PIL rounds the resized image to uint8 and truncates
  after every blend (brightness, contrast, saturation: about 0.5 units darker on
  average for each); here every step stays in float32 and is clipped to [0, 255];
* **contrast** blends with the mean luma as a float (PIL: the mean of the
  uint8 luma image, rounded to an integer); **grayscale** and **saturation** use the
  float luma ``0.299 R + 0.587 G + 0.114 B`` (PIL: rounded to uint8);
* **hue** rotates a float HSV hue by the drawn shift, modulo one turn (torchvision's
  tensor semantics; PIL stores hue in 8 bits, a turn being 255 units, and shifts by
  ``int(shift * 255)`` units, wrapping at 256);
* **random numbers** come from ``jax.random``, not NumPy: the two paths draw from the
  same distributions but different streams.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.data.device_colour import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    normalize,
    to_grayscale,
)
from experiments.data.images import Augmentation
from experiments.seeding import seed_hash

Batch = dict[str, jax.Array]

CROP_ATTEMPTS = 10
"""torchvision's ``RandomResizedCrop`` tries this many boxes before a central crop."""


def default_stored_size(resolution: int) -> int:
    """The side of the stored square for training at ``resolution``: ``ceil(8/7 r)``,
    256 for 224 (the ratio of ImageNet's resize-256-crop-224).

    Example:
      >>> default_stored_size(224), default_stored_size(32)
      (256, 37)
    """
    return math.ceil(resolution * 8 / 7)


# -- the random choices ---------------------------------------------------------------------


def sample_augmentation(
    key: jax.Array,
    width: jax.Array,
    height: jax.Array,
    crop_scale: tuple[float, float] = (0.7, 1.0),
) -> Augmentation:
    """Draws DomainBed's augmentation of one ``width`` x ``height`` image.

    The crop box is torchvision's ``RandomResizedCrop.get_params``: up to
    :data:`CROP_ATTEMPTS` boxes of area ``U(crop_scale) * width * height`` and aspect
    ratio ``exp(U(log 3/4, log 4/3))``, rounded to whole pixels, the first that fits
    placed uniformly; if none fits, the largest central box of aspect ratio in
    ``[3/4, 4/3]``. All attempts are drawn at once.

    Args:
        key: a typed PRNG key.
        width, height: the original image's size (integer scalars).
        crop_scale: range of the crop's fraction of the image area.

    Returns:
        An :class:`~experiments.data.images.Augmentation` of scalar arrays (the box in
        original pixels, as float32 whole numbers).
    """
    area_key, ratio_key, place_key, flip_key, factor_key, order_key, gray_key = (
        jax.random.split(key, 7)
    )
    width = jnp.asarray(width, jnp.float32)
    height = jnp.asarray(height, jnp.float32)
    area = width * height * jax.random.uniform(
        area_key, (CROP_ATTEMPTS,), minval=crop_scale[0], maxval=crop_scale[1]
    )
    aspect = jnp.exp(
        jax.random.uniform(
            ratio_key, (CROP_ATTEMPTS,), minval=math.log(3 / 4), maxval=math.log(4 / 3)
        )
    )
    crop_w, crop_h = jnp.round(jnp.sqrt(area * aspect)), jnp.round(jnp.sqrt(area / aspect))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = jnp.argmax(fits)
    ratio = width / height  # the fallback: a central crop
    central_w = jnp.where(ratio > 4 / 3, jnp.round(height * 4 / 3), width)
    central_h = jnp.where(ratio < 3 / 4, jnp.round(width * 4 / 3), height)
    found = jnp.any(fits)
    box_w = jnp.where(found, crop_w[first], central_w)
    box_h = jnp.where(found, crop_h[first], central_h)
    place = jax.random.uniform(place_key, (2,))
    top = jnp.where(found, jnp.floor(place[0] * (height - box_h + 1)), (height - box_h) // 2)
    left = jnp.where(found, jnp.floor(place[1] * (width - box_w + 1)), (width - box_w) // 2)
    factors = jax.random.uniform(
        factor_key,
        (4,),
        minval=jnp.array([0.7, 0.7, 0.7, -0.3]),
        maxval=jnp.array([1.3, 1.3, 1.3, 0.3]),
    )
    return Augmentation(
        left=left,
        top=top,
        width=box_w,
        height=box_h,
        flip=jax.random.uniform(flip_key) < 0.5,
        factors=factors,
        order=jax.random.permutation(order_key, 4),
        grayscale=jax.random.uniform(gray_key) < 0.1,
    )


# -- geometry ----------------------------------------------------------------------------


def crop_and_resize(
    image: jax.Array,
    left: jax.Array,
    top: jax.Array,
    width: jax.Array,
    height: jax.Array,
    resolution: int,
) -> jax.Array:
    """The box ``[left, left + width) x [top, top + height)`` of ``image`` (``(H, W, C)``,
    float, pixel units, fractional allowed) resized to ``resolution`` x ``resolution``.

    PIL's ``resize(..., BILINEAR, box=...)``: output pixel ``o`` samples the input at
    ``left + (o + 0.5) * width / resolution`` (pixel centres at ``i + 0.5``) with a
    triangle filter, widened by ``width / resolution`` when that exceeds 1
    (antialiasing), its weights renormalised over the pixels inside the image.
    """
    scale = jnp.stack([resolution / height, resolution / width]).astype(jnp.float32)
    translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
    return jax.image.scale_and_translate(
        image,
        (resolution, resolution, image.shape[-1]),
        (0, 1),
        scale,
        translation,
        method="linear",
        antialias=True,
        precision=jax.lax.Precision.HIGHEST,
    )


# -- one image, then batches ---------------------------------------------------------------


def apply_augmentation(
    pixels: jax.Array,
    width: jax.Array,
    height: jax.Array,
    augmentation: Augmentation,
    resolution: int,
) -> jax.Array:
    """Applies drawn choices to one stored image.

    Args:
        pixels: the stored uint8 ``(S, S, 3)`` square.
        width, height: the original image's size (the box's frame).
        augmentation: the choices (:func:`sample_augmentation`), box in original pixels.
        resolution: the output side.

    Returns:
        float32 ``(resolution, resolution, 3)`` in [0, 255], before normalisation.
    """
    rows, columns = pixels.shape[0], pixels.shape[1]
    x_scale = columns / jnp.asarray(width, jnp.float32)
    y_scale = rows / jnp.asarray(height, jnp.float32)
    image = crop_and_resize(
        pixels.astype(jnp.float32),
        augmentation.left * x_scale,
        augmentation.top * y_scale,
        augmentation.width * x_scale,
        augmentation.height * y_scale,
        resolution,
    )
    image = jnp.where(augmentation.flip, image[:, ::-1], image)
    brightness, contrast, saturation, hue = (augmentation.factors[k] for k in range(4))
    adjustments = (
        lambda x: adjust_brightness(x, brightness),
        lambda x: adjust_contrast(x, contrast),
        lambda x: adjust_saturation(x, saturation),
        lambda x: adjust_hue(x, hue),
    )
    for position in range(4):
        image = jax.lax.switch(augmentation.order[position], adjustments, image)
    return jnp.where(augmentation.grayscale, to_grayscale(image), image)


def augmentation_key(seed: int | jax.Array) -> jax.Array:
    """The root key of a run's device augmentation (threefry, whatever JAX's default)."""
    return jax.random.key(seed, impl="threefry2x32")


@functools.partial(jax.jit, static_argnames=("resolution", "crop_scale"))
def augment_batch(
    pixels: jax.Array,
    sizes: jax.Array,
    seed: jax.Array,
    step: jax.Array,
    domain_ids: jax.Array,
    example_ids: jax.Array,
    *,
    resolution: int,
    crop_scale: tuple[float, float] = (0.7, 1.0),
) -> jax.Array:
    """DomainBed's training augmentation of a stored batch, normalised.

    Args:
        pixels: uint8 ``(D, B, S, S, 3)`` stored squares.
        sizes: int32 ``(D, B, 2)``, every image's original ``(width, height)``.
        seed: the augmentation seed (:meth:`DeviceTransform.train`).
        step: the training step.
        domain_ids: ``(D,)``, each row's domain position in the step's batch.
        example_ids: ``(B,)``, each column's example position in the step's batch.
        resolution: the output side.
        crop_scale: range of the crop's fraction of the image area.

    Returns:
        float32 ``(D, B, resolution, resolution, 3)``.
    """
    step_key = jax.random.fold_in(augmentation_key(seed), step)

    def one(image: jax.Array, size: jax.Array, domain: jax.Array, example: jax.Array) -> jax.Array:
        key = jax.random.fold_in(jax.random.fold_in(step_key, domain), example)
        augmentation = sample_augmentation(key, size[0], size[1], crop_scale)
        return normalize(apply_augmentation(image, size[0], size[1], augmentation, resolution))

    per_example = jax.vmap(one, in_axes=(0, 0, None, 0))
    return jax.vmap(per_example, in_axes=(0, 0, 0, None))(pixels, sizes, domain_ids, example_ids)


@functools.partial(jax.jit, static_argnames=("resolution",))
def resize_batch(pixels: jax.Array, *, resolution: int) -> jax.Array:
    """``Resize((resolution, resolution))`` and normalisation of stored squares.

    Args:
        pixels: uint8 ``(..., S, S, 3)``.
        resolution: the output side.

    Returns:
        float32 ``(..., resolution, resolution, 3)``.
    """
    size = pixels.shape[-2]

    def one(image: jax.Array) -> jax.Array:
        return normalize(crop_and_resize(image.astype(jnp.float32), 0, 0, size, size,
                                         resolution))

    flat = pixels.reshape(-1, *pixels.shape[-3:])
    return jax.vmap(one)(flat).reshape(*pixels.shape[:-3], resolution, resolution, 3)


@dataclasses.dataclass(frozen=True)
class DeviceTransform:
    """What the device does to a folder dataset's stored batches.

    Attributes:
        resolution: the model's input side.
        stored_size: the side of the stored squares.
        seed: the run's seed (the augmentation's keys derive from it).
        augment: augment training batches (else they are resized as evaluation ones).
        crop_scale: range of the crop's fraction of the image area.

    Example:
      >>> transform = DeviceTransform(resolution=8, stored_size=10, seed=0)
      >>> stored = {"x": np.zeros((3, 2, 10, 10, 3), np.uint8),
      ...           "y": np.zeros((3, 2), np.int32),
      ...           "size": np.full((3, 2, 2), 40, np.int32)}
      >>> transform.train(stored, step=0)["x"].shape
      (3, 2, 8, 8, 3)
    """

    resolution: int
    stored_size: int
    seed: int
    augment: bool = True
    crop_scale: tuple[float, float] = (0.7, 1.0)

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        """One stored example's shape (uint8)."""
        return (self.stored_size, self.stored_size, 3)

    def train(
        self,
        batch: dict[str, jax.Array | np.ndarray],
        step: int,
        domain_ids: np.ndarray | None = None,
        example_ids: np.ndarray | None = None,
    ) -> Batch:
        """A step's model inputs from its stored batch (``x``, ``y``, ``size``).

        ``domain_ids`` and ``example_ids`` are the rows' and columns' positions in the
        whole step's batch, when ``batch`` holds some of them only (default: all).
        Returns ``{"x": float32 (D, B, r, r, 3), "y": ...}``.
        """
        pixels = batch["x"]
        if not self.augment:
            return {"x": resize_batch(pixels, resolution=self.resolution), "y": batch["y"]}
        domains, examples = pixels.shape[0], pixels.shape[1]
        x = augment_batch(
            pixels,
            batch["size"],
            np.uint32(seed_hash("device augmentation", self.seed)),
            np.int32(step),
            np.arange(domains, dtype=np.int32) if domain_ids is None else domain_ids,
            np.arange(examples, dtype=np.int32) if example_ids is None else example_ids,
            resolution=self.resolution,
            crop_scale=self.crop_scale,
        )
        return {"x": x, "y": batch["y"]}

    def eval(self, batch: dict[str, jax.Array | np.ndarray]) -> Batch:
        """Model inputs from a stored evaluation batch: ``x`` resized and normalised,
        the other entries (``y``, ``mask``) as they are."""
        return {**batch, "x": resize_batch(batch["x"], resolution=self.resolution)}
