"""ResNet-18, VGG-11 and any ``timm:NAME`` architecture from timm, adapted to 8-32 px images.

timm's ImageNet networks shrink their input 4x in the stem (a strided conv and a max-pool):
on 28-32 px images the later stages then see 1x1 maps and train badly. The adapter gives
them the stem of the DC/DM/MTT reference networks: a 3x3 stride-1 first conv (padding 1;
padding 3 for one-channel VGG, the reference's 28 -> 32 trick), no stem max-pool, and
ceil-mode pooling everywhere so that 8x8 inputs (digits) never shrink below 1x1 (strided
convolutions already map 1x1 to 1x1). On even sizes ceil mode changes nothing, so at 28/32
px the networks are the reference's. Weights are never downloaded (``pretrained=False``).

Every network has ``forward``, ``embed`` (the pooled pre-logit features: DM's embedding) and
``features`` (timm's per-stage intermediates, shallow to deep: MIM's layers), so each can
be a distillation model (``--set dm.model=resnet18``) as well as an evaluation model.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ddbench import hookimpl
from ddbench.components import Model
from ddbench.errors import DDBenchError

Norm = Literal["instancenorm", "batchnorm", "none"]


def instance_norm(num_features: int, **kw) -> nn.Module:
    """The reference's "instancenorm": GroupNorm with one group per channel, affine."""
    return nn.GroupNorm(num_features, num_features, affine=True, **kw)


def no_norm(num_features: int, **kw) -> nn.Module:
    return nn.Identity()


def norm_layer(kind: str):
    """A timm ``norm_layer`` factory for ``kind``."""
    return {"instancenorm": instance_norm, "batchnorm": nn.BatchNorm2d, "none": no_norm}[kind]


#: no convolution runs on maps smaller than this: instance norm of a 1x1 map is zero
MIN_MAP = 2


def adapt_to_small_images(net: nn.Module, image_size: tuple[int, int], stem_padding: int = 1) -> nn.Module:
    """Reference-style low-resolution stem and no collapse on tiny inputs (in place).

    The first conv is the one timm names in ``pretrained_cfg["first_conv"]``; patch
    embeddings (ViT-style ``patch_embed``) are left alone, as their size is the model's.
    For ResNet-style stages and VGG-style ``features`` a downsampling step that would leave
    the following convolutions maps under ``MIN_MAP`` px keeps the size instead (on
    inputs of 28-32 px nothing changes).
    """
    path = net.pretrained_cfg.get("first_conv") or ""
    if isinstance(path, (list, tuple)):
        path = path[0]
    first = net.get_submodule(path) if path and "patch_embed" not in path else None
    size = min(image_size)
    if isinstance(first, nn.Conv2d):
        net.set_submodule(path, nn.Conv2d(first.in_channels, first.out_channels, 3, stride=1,
                                          padding=stem_padding, bias=first.bias is not None))
        size += 2 * stem_padding - 2
    if isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):
        net.maxpool = nn.Identity()
    for m in net.modules():
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            m.ceil_mode = True
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        _keep_resnet_maps(net, size)
    elif isinstance(getattr(net, "features", None), nn.Sequential):
        _keep_sequential_maps(net.features, size)
    return net


def _keep_resnet_maps(net: nn.Module, size: int) -> None:
    """A stage whose stride-2 first block would go under MIN_MAP px keeps stride 1."""
    for i in range(1, 5):
        block = getattr(net, f"layer{i}")[0]
        strided = [(n, m) for n, m in block.named_modules()
                   if getattr(m, "stride", 1) in (2, (2, 2)) and isinstance(m, (nn.Conv2d, nn.AvgPool2d))]
        if not strided:
            continue
        if (size + 1) // 2 >= MIN_MAP:
            size = (size + 1) // 2
            continue
        for name, m in strided:
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
            else:
                block.set_submodule(name, nn.Identity())


def _keep_sequential_maps(features: nn.Sequential, size: int) -> None:
    """A max-pool followed by convolutions that would see under MIN_MAP px is dropped."""
    layers = list(features)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d):
            k, p, st = m.kernel_size[0], m.padding[0], m.stride[0]
            size = (size + 2 * p - k) // st + 1
        elif isinstance(m, nn.MaxPool2d):
            out = -(-size // 2)
            if out < MIN_MAP and any(isinstance(n, nn.Conv2d) for n in layers[i + 1:]):
                features[i] = nn.Identity()
            else:
                size = out


class TimmNet(nn.Module):
    """A timm classifier behind ddbench's model interface (``embed``, ``features``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if hasattr(self.net, "forward_intermediates"):
            return list(self.net.forward_intermediates(x, intermediates_only=True))
        return [self.net.forward_features(x)]


def create(arch: str, channels: int, num_classes: int, **kwargs) -> nn.Module:
    """``timm.create_model`` without weights; an unknown name is a one-line error."""
    import timm  # imported here: loading timm takes a second, `ddbench --help` should not

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        raise DDBenchError(f"unknown timm architecture {arch!r}; close matches: {', '.join(close) or 'none'} "
                           "(timm.list_models() lists them all)")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=channels, **kwargs)


class ResNet18(Model):
    """ResNet-18 (timm) with the reference's small-image stem (DC/DM/MTT 'ResNet18[BN]')."""

    name = "resnet18"

    @dataclass
    class Params:
        #: instancenorm = the reference 'ResNet18', batchnorm = 'ResNet18BN'
        norm: Norm = "instancenorm"

    def build(self, channels, num_classes, image_size):
        # timm zero-initialises each block's last norm; DM embeds with untrained networks,
        # where every residual branch would then be off: the reference does not do it
        net = create("resnet18", channels, num_classes, norm_layer=norm_layer(self.params.norm),
                     zero_init_last=False)
        return TimmNet(adapt_to_small_images(net, image_size))


class VGG11(Model):
    """VGG-11 (timm) with the reference's head: pooled 512 features -> Linear ('VGG11[BN]')."""

    name = "vgg11"

    @dataclass
    class Params:
        #: instancenorm = the reference 'VGG11', batchnorm = 'VGG11BN', none = timm's plain vgg11
        norm: Norm = "instancenorm"

    def build(self, channels, num_classes, image_size):
        norm = None if self.params.norm == "none" else norm_layer(self.params.norm)
        # timm's 4096-wide ImageNet head (a 7x7 ConvMlp) is dropped below; mlp_ratio makes it
        # one channel wide so that building it first costs nothing
        net = create("vgg11", channels, num_classes, norm_layer=norm, mlp_ratio=1 / 4096)
        net.prune_intermediate_layers(prune_head=True)
        net.reset_classifier(num_classes, "avg")
        return TimmNet(adapt_to_small_images(net, image_size, stem_padding=3 if channels == 1 else 1))


class Timm(Model):
    """Any timm architecture as timm:NAME (e.g. timm:resnet50), with the small-image adapter."""

    name = "timm"
    argument = "arch"

    @dataclass
    class Params:
        #: the timm architecture, set by ``timm:NAME`` (e.g. timm:resnet50)
        arch: str = ""
        #: the small-image stem (3x3 stride-1 first conv, no stem max-pool, ceil-mode pooling)
        small_stem: bool = True

    def build(self, channels, num_classes, image_size):
        if not self.params.arch:
            raise DDBenchError("model 'timm' needs an architecture: timm:NAME (e.g. timm:resnet50)")
        net = create(self.params.arch, channels, num_classes)
        return TimmNet(adapt_to_small_images(net, image_size) if self.params.small_stem else net)


@hookimpl
def register_models(register):
    register(ResNet18)
    register(VGG11)
    register(Timm)
