"""Networks of the trainer: DomainBed's ``MNIST_CNN`` for 28x28 data, ResNet-18 otherwise.

Every model is called as ``model.apply(variables, x, train=bool, rngs={"dropout": key})``
with ``x`` of shape ``(B, H, W, C)`` and returns logits ``(B, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from experiments.models.mnist_cnn import MNIST_CNN as MNIST_CNN


def get_model(
    input_shape: tuple[int, int, int], num_classes: int, hparams: Mapping[str, Any]
) -> nn.Module:
    """The network DomainBed trains on inputs of ``input_shape`` (H, W, C).

    ``MNIST_CNN`` for 28x28 inputs; otherwise torchvision's ResNet-18 with frozen
    BatchNorm and dropout ``hparams["resnet_dropout"]`` before the classifier.
    """
    if tuple(input_shape[:2]) == (28, 28):
        return MNIST_CNN(num_classes=num_classes)
    from experiments.models.resnet import ResNet18

    return ResNet18(num_classes=num_classes, dropout_rate=float(hparams.get("resnet_dropout", 0.0)))
