"""The trainer's networks: a registry of models chosen by name, with a default per dataset.

Every model is called as ``model.apply(variables, x, train=bool, rngs={"dropout": key})``
with ``x`` of shape ``(B, H, W, C)`` and returns logits ``(B, num_classes)``; it computes
its convolutions and dense layers in the ``dtype`` it is built with (``--dtype``) and
keeps its parameters in float32. A dataset
entry names its default (:attr:`experiments.data.DatasetSpec.model`); ``--model``
chooses another. A new model is one :func:`register` call.

Example:
  >>> get_model("mnist_cnn", 10, {}).num_classes
  10
  >>> get_model("resnet18", 7, {}, dtype="bfloat16").dtype
  dtype(bfloat16)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from experiments.models.mnist_cnn import MNIST_CNN as MNIST_CNN
from experiments.registry import Registry

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Model:
    """A network of the trainer.

    Attributes:
        name: the ``--model`` value.
        build: ``build(num_classes, hparams, dtype=...)`` returns the Flax module, whose
            convolutions and dense layers compute in ``dtype`` (a NumPy dtype) and whose
            parameters are float32.
        load_pretrained: ``load_pretrained(path, variables)`` returns the variables with
            the weights of a file (``--pretrained``); None if the model has none.
        description: what it is, for the docs.
    """

    name: str
    build: Callable[..., nn.Module]
    load_pretrained: Callable[[str | os.PathLike[str], PyTree], PyTree] | None = None
    description: str = ""


MODELS: Registry[Model] = Registry("model")
"""Every registered model by name."""
register = MODELS.register
get_model_entry = MODELS.entry


def get_model(
    name: str, num_classes: int, hparams: Mapping[str, Any], *, dtype: str = "float32"
) -> nn.Module:
    """The Flax module of model ``name`` for ``num_classes`` labels, computing its
    convolutions and dense layers in ``dtype`` (``"float32"`` or ``"bfloat16"``)."""
    return get_model_entry(name).build(num_classes, hparams, dtype=jnp.dtype(dtype))


def _resnet18(num_classes: int, hparams: Mapping[str, Any], *, dtype: Any) -> nn.Module:
    from experiments.models.resnet import ResNet18

    return ResNet18(num_classes=num_classes,
                    dropout_rate=float(hparams.get("resnet_dropout", 0.0)), dtype=dtype)


def _resnet18_weights(path: str | os.PathLike[str], variables: PyTree) -> PyTree:
    from experiments.models.pretrained import load_resnet18_weights

    return load_resnet18_weights(path, variables)


register(Model(
    name="mnist_cnn",
    build=lambda num_classes, hparams, *, dtype: MNIST_CNN(num_classes=num_classes, dtype=dtype),
    description="DomainBed's MNIST_CNN, for 28x28 inputs",
))
register(Model(
    name="resnet18",
    build=_resnet18,
    load_pretrained=_resnet18_weights,
    description="torchvision's ResNet-18, BatchNorm frozen, dropout `resnet_dropout` "
    "before the classifier; `--pretrained` takes torchvision weights",
))
