"""DomainBed's ``MNIST_CNN`` featurizer with its linear classifier, in Flax."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MNIST_CNN(nn.Module):  # noqa: N801 - DomainBed's name
    """DomainBed's small CNN for 28x28 inputs, followed by a linear classifier.

    Four 3x3 convolutions (64; 128 with stride 2; 128; 128 channels), each followed by
    a ReLU and a GroupNorm with 8 groups, then a global average pool to 128 features
    and a linear layer (DomainBed's ``networks.MNIST_CNN`` + ``Classifier``).

    It has neither dropout nor batch statistics: ``train`` and ``rngs`` are accepted
    for a signature shared with :class:`experiments.models.resnet.ResNet18`, and ignored.

    Attributes:
        num_classes: the number of logits.
        dtype: the compute dtype of the convolutions and the classifier (bfloat16 for
            mixed precision); parameters are float32 whatever it is, and the GroupNorms
            compute in float32.
    """

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``x`` of shape ``(B, H, W, C)``."""
        del train
        for features, strides in ((64, 1), (128, 2), (128, 1), (128, 1)):
            x = nn.Conv(features, (3, 3), strides=strides, padding=1, dtype=self.dtype)(x)
            x = nn.relu(x)
            x = nn.GroupNorm(num_groups=8, epsilon=1e-5)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)
