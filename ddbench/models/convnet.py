"""ConvNet-3, exactly as the reference (DC/DSA/DM/MTT ``networks.py``).

Block = Conv2d(3x3, padding 1) -> norm -> act -> pool; the classifier is a Linear on the
flattened last feature map (no global pooling). "instancenorm" is GroupNorm(C, C) with
affine, as in the reference. One-channel inputs get padding 3 in the first conv, which
turns 28x28 MNIST into 32x32 maps (the reference's 28 -> 32 trick).

``use_fast_pooling`` swaps a built network's ``AvgPool2d(2, 2)`` layers (with the ReLU before
them) for ones computed with faster CPU kernels and less saved memory: the same function up
to the order of the four-term sum, the same backward to the bit. The distillers opt in;
evaluation keeps PyTorch's kernels, so its numbers stay bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
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


def _pair_columns(v: torch.Tensor) -> torch.Tensor:
    """Means of column pairs of the row-pair sums ``v``: the second half of a 2x2 pooling."""
    pairs = v.unflatten(-1, (v.shape[-1] // 2, 2))
    return (pairs[..., 0] + pairs[..., 1]).mul_(0.25)


def _pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """Mean of each 2x2 window from sums of contiguous views. PyTorch's NCHW ``avg_pool2d``
    (forward and backward) took a fifth of a CIFAR ConvNet step on CPU."""
    n, c, h, w = x.shape
    rows = x.view(n, c, h // 2, 2 * w)
    return _pair_columns(rows[..., :w] + rows[..., w:])


def _unpool_2x2(g: torch.Tensor) -> torch.Tensor:
    """The adjoint of ``_pool_2x2``: each gradient / 4 copied to its window (two expands)."""
    n, c, h, w = g.shape
    g = torch.mul(g.unsqueeze(-1).expand(n, c, h, w, 2), 0.25).view(n, c, h, 2 * w)
    # contiguous(), not reshape(): for h == 1 reshape would return a stride-0 view
    return g.unsqueeze(3).expand(n, c, h, 2, 2 * w).contiguous().view(n, c, 2 * h, 2 * w)


class _Pool2x2(torch.autograd.Function):
    """Linear, so each direction's backward is the other: differentiable to any order
    (DC's matching loss differentiates through a gradient)."""

    @staticmethod
    def forward(ctx, x):
        return _pool_2x2(x)

    @staticmethod
    def backward(ctx, g):
        return _Unpool2x2.apply(g)


class _Unpool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g):
        return _unpool_2x2(g)

    @staticmethod
    def backward(ctx, gg):
        return _Pool2x2.apply(gg)


class _ReLUPool2x2(torch.autograd.Function):
    """In-place ReLU then 2x2 mean, consuming its input (row sums are made in its memory).
    Keeps a 1-byte mask instead of the 4-byte ReLU output that ``ReLU`` and ``AvgPool2d``
    save; the input is returned marked dirty, so autograd still catches its misuse."""

    @staticmethod
    def forward(ctx, y):
        r = y.relu_()
        mask = r.bool()  # r != 0 is r > 0, and keeps NaN as threshold_backward does
        ctx.save_for_backward(mask)
        ctx.mark_dirty(y)
        ctx.mark_non_differentiable(y)
        n, c, h, w = y.shape
        rows = r.view(n, c, h // 2, 2 * w)
        return _pair_columns(rows[..., :w].add_(rows[..., w:])), y

    @staticmethod
    def backward(ctx, g, _):
        # plain ops, so that DC's double backward goes through (the ReLU's second derivative is 0)
        (mask,) = ctx.saved_tensors
        n, c, h, w = g.shape
        up = torch.mul(g.unsqueeze(-1).expand(n, c, h, w, 2), 0.25).view(n, c, h, 1, 2 * w)
        return torch.mul(up, mask.view(n, c, h, 2, 2 * w)).view(n, c, 2 * h, 2 * w)


def _is_2x2(m: nn.Module) -> bool:
    pair = {2, (2, 2)}
    return (type(m) is nn.AvgPool2d and m.kernel_size in pair and m.stride in pair
            and m.padding in (0, (0, 0)) and not m.ceil_mode and m.divisor_override is None)


def _fast_ok(x: torch.Tensor) -> bool:
    """Even-sized contiguous CPU maps: where the view arithmetic applies (on GPUs PyTorch's
    own kernel is fast already)."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.shape[2] % 2 == 0
            and x.shape[3] % 2 == 0 and x.is_contiguous())


class FastAvgPool2d(nn.AvgPool2d):
    """``AvgPool2d(2, 2)`` with ``_pool_2x2`` where ``_fast_ok``, PyTorch's kernel elsewhere."""

    def __init__(self):
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Pool2x2.apply(x) if _fast_ok(x) else super().forward(x)


class FastReLUAvgPool2d(FastAvgPool2d):
    """``ReLU(inplace=True)`` followed by ``AvgPool2d(2, 2)``, in one step (``_ReLUPool2x2``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast_ok(x) and not (x.is_leaf and x.requires_grad):
            return _ReLUPool2x2.apply(x)[0]
        return super().forward(torch.relu_(x))  # a leaf that needs grad: autograd's error


def use_fast_pooling(net: nn.Module) -> nn.Module:
    """In place: in a Sequential, ``ReLU(inplace=True), AvgPool2d(2, 2)`` becomes ``Identity,
    FastReLUAvgPool2d``; any other plain ``AvgPool2d(2, 2)`` becomes ``FastAvgPool2d``."""
    for parent in list(net.modules()):
        kids = list(parent.named_children())
        for i, (name, child) in enumerate(kids):
            if not _is_2x2(child):
                continue
            before = kids[i - 1] if i > 0 and isinstance(parent, nn.Sequential) else None
            if before is not None and type(before[1]) is nn.ReLU and before[1].inplace:
                setattr(parent, before[0], nn.Identity())
                setattr(parent, name, FastReLUAvgPool2d())
            else:
                setattr(parent, name, FastAvgPool2d())
    return net


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
        width: int = 128
        depth: int = 3
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
