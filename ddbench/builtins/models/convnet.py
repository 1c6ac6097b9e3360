"""ConvNet-3, exactly as the reference (DC/DSA/DM/MTT ``networks.py``).

Block = Conv2d(3x3, padding 1) -> norm -> act -> pool; the classifier is a Linear on the
flattened last feature map (no global pooling). "instancenorm" is GroupNorm(C, C) with
affine, as in the reference. One-channel inputs get padding 3 in the first conv, which
turns 28x28 MNIST into 32x32 maps (the reference's 28 -> 32 trick).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from annotated_types import Ge
from torch import nn

from ddbench import hookimpl
from ddbench.components import Model


def _norm(kind: str, channels: int, hw: tuple[int, int]) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels, track_running_stats=True)
    if kind == "layernorm":
        return nn.LayerNorm([channels, *hw], elementwise_affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    return nn.SiLU()  # "swish"


class BlockStack(nn.Module):
    """A network made of ``self.blocks`` then a head on the flattened last map: what DM
    embeds (``embed``) and what MIM and DM read per block (``features``)."""

    blocks: nn.ModuleList

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


class ConvNetModule(BlockStack):
    """The network; ``features(x)`` returns each block's output (what DM and MIM use)."""

    def __init__(self, channels, num_classes, image_size, width, depth, act, norm, pooling):
        super().__init__()
        blocks = []
        h, w = image_size
        in_ch = channels
        for d in range(depth):
            pad = 3 if channels == 1 and d == 0 else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers = [nn.Conv2d(in_ch, width, kernel_size=3, padding=pad)]
            if norm != "none":
                layers.append(_norm(norm, width, (h, w)))
            layers.append(_act(act))
            if pooling != "none":
                layers.append(nn.MaxPool2d(2, 2) if pooling == "maxpooling" else nn.AvgPool2d(2, 2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            in_ch = width
        if h < 1 or w < 1:
            raise ValueError(f"ConvNet depth {depth} is too deep for {image_size[0]}x{image_size[1]} inputs")
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ConvNet(Model):
    """ConvNet-D3 of the DC/DM/MTT papers (width 128, instance norm, ReLU, avg pooling)."""

    name = "convnet"

    @dataclass
    class Params:
        width: Annotated[int, Ge(1)] = 128
        depth: Annotated[int, Ge(1)] = 3
        act: Literal["relu", "sigmoid", "leakyrelu", "swish"] = "relu"
        norm: Literal["instancenorm", "batchnorm", "layernorm", "groupnorm", "none"] = "instancenorm"
        pooling: Literal["avgpooling", "maxpooling", "none"] = "avgpooling"

    def build(self, channels, num_classes, image_size):
        p = self.params
        return ConvNetModule(
            channels, num_classes, image_size, p.width, p.depth, p.act, p.norm, p.pooling
        )


@hookimpl
def register_models(register):
    register(ConvNet)
