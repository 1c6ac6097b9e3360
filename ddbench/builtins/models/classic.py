"""AlexNet, LeNet and MLP of the DC/DM/MTT reference (``networks.py``), for cross-architecture
evaluation; like ConvNet they also serve as distillation models (``embed``, ``features``).

- ``alexnet``: 5 convs (128, 192, 256, 192, 192; kernels 5, 5, 3, 3, 3), ReLU, max-pool after
  conv 1, 2 and 5, Linear on the flattened map. One-channel inputs get padding 4 in the first
  conv (28 -> 32, then 4x4 maps as at 32 px). norm: none ('AlexNet'), batchnorm ('AlexNetBN',
  norm between conv and ReLU), instancenorm.
- ``lenet``: conv 5x5 (6) -> pool -> conv 5x5 (16) -> pool -> 120 -> 84 -> classes, ReLU;
  padding 2 in the first conv for one channel (28 -> 5x5 maps as at 32 px). Deviation for
  tiny inputs: the second conv gets padding 2 when its input is under 5 px (8x8 digits),
  where the reference's would have no output.
- ``mlp``: flatten -> 128 -> 128 -> classes, ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from ddbench import hookimpl
from ddbench.builtins.models.convnet import BlockStack
from ddbench.builtins.models.timm_models import instance_norm
from ddbench.components import Model


def _conv_out(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


class AlexNetModule(BlockStack):
    """The reference AlexNet; ``features`` returns each conv block's output."""

    #: (out channels, kernel, padding, max-pool after)
    LAYERS = ((128, 5, 2, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True))

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str):
        super().__init__()
        h, w = image_size
        blocks, in_ch = [], channels
        for i, (out, k, pad, pool) in enumerate(self.LAYERS):
            pad = 4 if channels == 1 and i == 0 else pad
            layers = [nn.Conv2d(in_ch, out, kernel_size=k, padding=pad)]
            if norm != "none":
                layers.append(nn.BatchNorm2d(out) if norm == "batchnorm" else instance_norm(out))
            layers.append(nn.ReLU(inplace=True))
            h, w = _conv_out(h, k, pad), _conv_out(w, k, pad)
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            in_ch = out
        if h < 1 or w < 1:
            raise ValueError(f"AlexNet needs inputs of at least 8x8, got {image_size[0]}x{image_size[1]}")
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(in_ch * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class LeNetModule(nn.Module):
    """The reference LeNet; ``embed`` is the 84-d penultimate layer (as DM's)."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        pad1 = 2 if channels == 1 else 0
        h, w = (_conv_out(s, 5, pad1) // 2 for s in image_size)
        pad2 = 2 if min(h, w) < 5 else 0
        h, w = _conv_out(h, 5, pad2) // 2, _conv_out(w, 5, pad2) // 2
        if h < 1 or w < 1:
            raise ValueError(f"LeNet needs inputs of at least 8x8, got {image_size[0]}x{image_size[1]}")
        self.block1 = nn.Sequential(nn.Conv2d(channels, 6, 5, padding=pad1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.block2 = nn.Sequential(nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.fc_1 = nn.Linear(16 * h * w, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.fc_3 = nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.block1(x)
        return [a, self.block2(a)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(x)).flatten(1)
        return F.relu(self.fc_2(F.relu(self.fc_1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(self.embed(x))


class MLPModule(nn.Module):
    """The reference MLP; ``features`` are the two hidden layers (vectors, not maps)."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], width: int):
        super().__init__()
        self.fc_1 = nn.Linear(channels * image_size[0] * image_size[1], width)
        self.fc_2 = nn.Linear(width, width)
        self.fc_3 = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = F.relu(self.fc_1(x.flatten(1)))
        return [h1, F.relu(self.fc_2(h1))]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(self.embed(x))


class AlexNet(Model):
    """AlexNet of the DC/DM/MTT reference (5 convs; 'AlexNetBN' with norm=batchnorm)."""

    name = "alexnet"

    @dataclass
    class Params:
        norm: Literal["none", "batchnorm", "instancenorm"] = "none"

    def build(self, channels, num_classes, image_size):
        return AlexNetModule(channels, num_classes, image_size, self.params.norm)


class LeNet(Model):
    """LeNet-5 of the DC reference (2 convs, 3 linear layers)."""

    name = "lenet"

    def build(self, channels, num_classes, image_size):
        return LeNetModule(channels, num_classes, image_size)


class MLP(Model):
    """MLP of the DC reference (2 hidden layers of 128, ReLU)."""

    name = "mlp"

    @dataclass
    class Params:
        width: Annotated[int, Ge(1)] = 128

    def build(self, channels, num_classes, image_size):
        return MLPModule(channels, num_classes, image_size, self.params.width)


@hookimpl
def register_models(register):
    register(AlexNet)
    register(LeNet)
    register(MLP)
