"""ImageNet weights for :class:`experiments.models.resnet.ResNet18` from a torchvision state dict.

DomainBed starts every ResNet run from torchvision's ImageNet ResNet-18. This module
reads such a state dict (keys ``conv1.weight``, ``bn1.running_mean``,
``layer2.0.downsample.0.weight``, ``fc.weight`` ...) and returns new Flax variables:

* ``.safetensors`` and ``.npz`` files are read with NumPy only (``.npz`` with
  ``allow_pickle=False``);
* ``.pth`` / ``.pt`` files need torch, and are read with
  ``torch.load(path, map_location="cpu", weights_only=True)``, never plain pickle.

Convert a torchvision checkpoint once, where torch is installed, with::

    import torch, torchvision
    from safetensors.torch import save_file
    save_file(torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict(),
              "resnet18_imagenet.safetensors")

Conversion (see :mod:`experiments.models.resnet` for the key mapping): convolution
kernels OIHW -> HWIO, the linear layer (O, I) -> (I, O), BatchNorm ``weight``/``bias``
-> ``scale``/``bias`` and ``running_mean``/``running_var`` -> ``batch_stats``
``mean``/``var``; ``num_batches_tracked`` is ignored. The classifier ``fc`` is kept
as initialised when the file's has another number of classes (DomainBed replaces it)
or when the file has none. A ``module.`` prefix (``nn.DataParallel``) is stripped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import FrozenDict, unfreeze

__all__ = ["convert_resnet18_state_dict", "load_resnet18_weights", "read_state_dict"]

_CLASSIFIER = "fc"
_IGNORED_SUFFIX = ".num_batches_tracked"
_DATA_PARALLEL_PREFIX = "module."

# Flax (collection, leaf name) -> (torch parameter name, conversion to the Flax layout).
_LEAF_TO_TORCH: dict[tuple[str, str], str] = {
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a torch-keyed state dict as NumPy arrays.

    Args:
        path: a ``.safetensors``, ``.npz``, ``.pth`` or ``.pt`` file (the last two need
            torch and are read with ``weights_only=True``).

    Returns:
        ``{torch key: array}`` in torch's layouts.

    Raises:
        ValueError: for another file extension.
        ImportError: for a torch file when torch is not installed.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    if suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"reading {path!r} needs torch, which is not installed; convert it where "
                "torch is (safetensors.torch.save_file(state_dict, 'x.safetensors')) and "
                "pass the .safetensors file"
            ) from error
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        return {key: value.detach().float().numpy() for key, value in state.items()}
    raise ValueError(f"unsupported weights file {path!r}: expected .safetensors, .npz, .pth or .pt")


def _torch_key(path: tuple[str, ...]) -> str:
    """``("params", "layer2_0", "downsample_0", "kernel")`` -> ``layer2.0.downsample.0.weight``."""
    collection, *modules, leaf = path
    torch_modules = [re.sub(r"_(\d+)$", r".\1", module) for module in modules]
    if leaf == "kernel":
        name = "weight"
    else:
        name = _LEAF_TO_TORCH.get((collection, leaf))
        if name is None:
            raise ValueError(f"no torch counterpart for the variable {'/'.join(path)}")
    return ".".join([*torch_modules, name])


def _to_flax_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """Torch layout -> Flax layout: OIHW -> HWIO for convolutions, (O, I) -> (I, O)."""
    if leaf != "kernel":
        return array
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """The torch shape that converts to ``flax_shape`` (inverse of :func:`_to_flax_layout`)."""
    if leaf == "kernel" and len(flax_shape) == 4:
        height, width, inputs, outputs = flax_shape
        return (outputs, inputs, height, width)
    if leaf == "kernel" and len(flax_shape) == 2:
        return flax_shape[::-1]
    return flax_shape


def convert_resnet18_state_dict(
    state_dict: Mapping[str, Any], variables: Mapping[str, Any]
) -> dict[str, Any] | FrozenDict:
    """Returns ``variables`` with every entry replaced by the state dict's.

    Args:
        state_dict: torchvision-keyed arrays in torch layout (NumPy or array-like).
        variables: the ``{"params", "batch_stats"}`` of a ResNet18 (only its
            structure, shapes and dtypes are used; it is not modified).

    Returns:
        New variables of the same structure (a ``FrozenDict`` if a ``FrozenDict`` was
        given); ``fc`` keeps its values from ``variables`` when the state dict has none
        or has another number of classes.

    Raises:
        ValueError: naming the key, for a key of the model missing from the state dict,
            a key of the state dict the model does not have, or a shape mismatch
            (expected vs found, both in torch layout).
    """
    state = {key: np.asarray(value) for key, value in state_dict.items()}
    if state and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(_DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    flat = traverse_util.flatten_dict(unfreeze(variables))
    expected = {_torch_key(path): path for path in flat}

    unexpected = sorted(
        key for key in state if key not in expected and not key.endswith(_IGNORED_SUFFIX)
    )
    if unexpected:
        raise ValueError(
            f"unexpected keys in the state dict (not in ResNet18): {unexpected[:10]}"
            + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else "")
        )
    keep_classifier = _keep_classifier(state, flat, expected)
    missing = sorted(
        key
        for key in expected
        if key not in state and not (keep_classifier and key.startswith(_CLASSIFIER + "."))
    )
    if missing:
        raise ValueError(
            f"missing keys in the state dict: {missing[:10]}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )

    converted: dict[tuple[str, ...], Any] = {}
    for key, path in expected.items():
        target = flat[path]
        if keep_classifier and key.startswith(_CLASSIFIER + "."):
            converted[path] = target
            continue
        found = state[key]
        want = _torch_shape(tuple(target.shape), path[-1])
        if tuple(found.shape) != want:
            raise ValueError(
                f"shape mismatch for {key!r} (-> {'/'.join(path)}): expected {want} "
                f"(torch layout), found {tuple(found.shape)}"
            )
        converted[path] = jnp.asarray(_to_flax_layout(found, path[-1]), dtype=target.dtype)
    result = traverse_util.unflatten_dict(converted)
    return FrozenDict(result) if isinstance(variables, FrozenDict) else result


def _keep_classifier(
    state: Mapping[str, np.ndarray],
    flat: Mapping[tuple[str, ...], Any],
    expected: Mapping[str, tuple[str, ...]],
) -> bool:
    """Whether ``fc`` keeps its initial values: absent, or another number of classes."""
    weight_key = f"{_CLASSIFIER}.weight"
    if weight_key not in expected:
        return False
    if weight_key not in state and f"{_CLASSIFIER}.bias" not in state:
        return True
    if weight_key not in state:
        return False  # Reported as a missing key.
    found = state[weight_key].shape
    inputs, outputs = flat[expected[weight_key]].shape
    # Same input features but another number of classes: DomainBed's new classifier.
    return len(found) == 2 and found[1] == inputs and found[0] != outputs


def load_resnet18_weights(
    path: str | os.PathLike[str], variables: Mapping[str, Any]
) -> dict[str, Any] | FrozenDict:
    """Loads a torchvision ResNet-18 state dict into (a copy of) ``variables``.

    Args:
        path: a ``.safetensors``, ``.npz`` or (with torch installed) ``.pth``/``.pt``
            state dict with torchvision's keys.
        variables: ``ResNet18(...).init(...)`` variables; not modified.

    Returns:
        New variables; ``fc`` is left as initialised if the file's classifier has another
        number of classes (e.g. ImageNet's 1000) or is absent.

    Raises:
        ValueError: for missing or unexpected keys and wrong shapes, naming the key.

    Example:
        >>> model = ResNet18(num_classes=7)  # doctest: +SKIP
        >>> images = jnp.zeros((1, 224, 224, 3))  # doctest: +SKIP
        >>> variables = model.init(key, images, train=False)  # doctest: +SKIP
        >>> path = "resnet18_imagenet.safetensors"  # doctest: +SKIP
        >>> variables = load_resnet18_weights(path, variables)  # doctest: +SKIP
    """
    return convert_resnet18_state_dict(read_state_dict(path), variables)
