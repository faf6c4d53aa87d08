"""Writes the golden fixture that checks the Flax ResNet-18 against torch.

Needs torch (never installed in the project's environment; use a separate one)::

    python3 -m venv .venv-torch
    .venv-torch/bin/pip install torch numpy safetensors
    .venv-torch/bin/python tools/make_resnet_golden.py

A narrow ResNet-18 in torchvision's exact module layout (so its state dict has
torchvision's key names; torchvision itself is not needed) gets random weights and
random BatchNorm running statistics. The fixture
``tests/fixtures/resnet18_golden.safetensors`` holds that state dict (torch layout and
key names), plus ``golden.input`` (N, 3, H, W) and ``golden.logits``, the eval-mode
torch logits of that input. ``tests/experiments/test_pretrained.py`` converts it with
:func:`experiments.pretrained.load_resnet18_weights` and compares the logits.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn

WIDTH = 8
NUM_CLASSES = 5
BATCH = 2
RESOLUTION = 64
DEFAULT_OUTPUT = (
    pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/resnet18_golden.safetensors"
)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock (expansion 1), same attribute names."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two 3x3 convolutions plus the (possibly downsampled) input."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18 with every channel count scaled by ``width / 64``."""

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**stage
            blocks = [BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of NCHW images."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize(model: ResNet18, generator: torch.Generator) -> None:
    """Random weights and random BatchNorm statistics, scaled to keep activations O(1)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.running_mean.normal_(0.0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.num_batches_tracked.fill_(1234)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)


def main(argv: list[str] | None = None) -> None:
    """Builds the model, computes eval-mode logits and writes the fixture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    model = ResNet18(NUM_CLASSES, width=WIDTH)
    randomize(model, generator)
    model.eval()
    images = torch.randn(BATCH, 3, RESOLUTION, RESOLUTION, generator=generator)
    with torch.no_grad():
        logits = model(images)

    tensors = {key: value.numpy().copy() for key, value in model.state_dict().items()}
    tensors["golden.input"] = images.numpy()
    tensors["golden.logits"] = logits.numpy()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors,
        str(args.output),
        metadata={"width": str(WIDTH), "num_classes": str(NUM_CLASSES), "torch": torch.__version__},
    )
    size_kib = args.output.stat().st_size / 1024
    print(f"wrote {args.output} ({size_kib:.0f} KiB, {len(tensors)} tensors)")
    print("logits:", np.array2string(logits.numpy(), precision=4))


if __name__ == "__main__":
    main()
