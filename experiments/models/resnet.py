"""torchvision's ResNet-18 in Flax (NHWC), with DomainBed's frozen BatchNorm and dropout.

The module tree mirrors torchvision's ``resnet18`` so that an ImageNet state dict maps
onto it by a fixed rule (see :mod:`experiments.pretrained`)::

    torch key                              Flax variable
    conv1.weight            (O, I, H, W)   params/conv1/kernel            (H, W, I, O)
    bn1.weight / bn1.bias                  params/bn1/scale, params/bn1/bias
    bn1.running_mean / bn1.running_var     batch_stats/bn1/mean, batch_stats/bn1/var
    layer1.0.conv1.weight                  params/layer1_0/conv1/kernel
    layer2.0.downsample.0.weight           params/layer2_0/downsample_0/kernel
    layer2.0.downsample.1.running_var      batch_stats/layer2_0/downsample_1/var
    fc.weight               (O, I)         params/fc/kernel               (I, O)
    fc.bias                                params/fc/bias

i.e. a numeric component of the torch key is joined to the name before it with ``_``.
``num_batches_tracked`` has no counterpart (the statistics are never updated).

As in DomainBed (``networks.ResNet``), BatchNorm always normalises with its running
statistics (``freeze_bn``), so ``batch_stats`` never change during training, and
dropout of rate ``dropout_rate`` sits between the pooled features and the classifier
``fc`` (DomainBed's ``resnet_dropout``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_STAGE_STRIDES = (1, 2, 2, 2)
_BLOCKS_PER_STAGE = 2  # ResNet-18: [2, 2, 2, 2] BasicBlocks.

# torchvision's nn.BatchNorm2d: eps 1e-5; frozen, so the momentum is irrelevant.
_FrozenBatchNorm = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5)


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    """A bias-free convolution padded like torch's ``padding=kernel // 2``, computing in
    ``dtype`` (its kernel stays float32)."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        dtype=dtype,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convolutions and a residual connection.

    Attributes:
        features: output channels of both convolutions.
        stride: stride of the first convolution (and of the downsampling shortcut).
        dtype: the convolutions' compute dtype.
    """

    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to ``x`` of shape ``(B, H, W, C)``."""
        identity = x
        y = _conv(self.features, 3, self.stride, "conv1", self.dtype)(x)
        y = nn.relu(_FrozenBatchNorm(name="bn1")(y))
        y = _conv(self.features, 3, 1, "conv2", self.dtype)(y)
        y = _FrozenBatchNorm(name="bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            identity = _conv(self.features, 1, self.stride, "downsample_0", self.dtype)(x)
            identity = _FrozenBatchNorm(name="downsample_1")(identity)
        return nn.relu(y + identity)


class ResNet18(nn.Module):
    """ResNet-18 (torchvision layout) with frozen BatchNorm and dropout before ``fc``.

    Attributes:
        num_classes: number of logits of the classifier ``fc``.
        dropout_rate: dropout on the pooled features (DomainBed's ``resnet_dropout``);
            needs the ``"dropout"`` rng when ``train`` and the rate is positive.
        width: channels of the first stage; the stages have ``width * (1, 2, 4, 8)``
            channels (64 gives torchvision's ResNet-18, 512 pooled features).
        dtype: the compute dtype of the convolutions and ``fc`` (bfloat16 for mixed
            precision); parameters and BatchNorm statistics are float32 whatever it is,
            and the BatchNorms compute in float32.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = ResNet18(num_classes=7, width=8)
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
        >>> sorted(variables)
        ['batch_stats', 'params']
        >>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
        (2, 7)
    """

    num_classes: int
    dropout_rate: float = 0.0
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``x`` of shape ``(B, H, W, 3)``."""
        x = _conv(self.width, 7, 2, "conv1", self.dtype)(x)
        x = nn.relu(_FrozenBatchNorm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, stride in enumerate(_STAGE_STRIDES):
            features = self.width * 2**stage
            for block in range(_BLOCKS_PER_STAGE):
                x = BasicBlock(
                    features,
                    stride if block == 0 else 1,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{block}",
                )(x)
        x = jnp.mean(x, axis=(1, 2))  # torchvision's AdaptiveAvgPool2d((1, 1)) + flatten
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
