"""``dm``: Distribution Matching (Zhao & Bilen, WACV 2023), faithful to ``main_DM.py``.

Each iteration samples a fresh randomly initialised network with frozen weights, applies
one Siamese DSA transform per class to the real batch and the synthetic images of that
class, and matches the class means of the final embeddings (squared L2, summed over
classes). The images take one SGD step (momentum 0.5) per iteration.

Done better than the reference, with the same loss and gradients: all classes go through
the network in one batched forward (exact for instance norm; for batch norm it is the
reference's own BN branch), the real side without a graph and in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from annotated_types import Ge, Gt, Interval

from ddbench import hookimpl
from ddbench.builtins.distillers.random import init_synthetic
from ddbench.components import Distiller
from ddbench.context import DistillContext, StepContext
from ddbench.data.sampling import sample_per_class
from ddbench.evaluation.augment import Strategy, diff_augment, resolve_strategy
from ddbench.runtime.allocator import inference_chunk
from ddbench.runtime.precision import Amp, autocast
from ddbench.synthetic import SyntheticSet


class DM(Distiller):
    """Distribution matching: class-mean embeddings of random frozen ConvNets (Zhao & Bilen 2023)."""

    name = "dm"
    paper_protocol = "dm"

    @dataclass
    class Params:
        iterations: Annotated[int, Ge(1)] = 20000
        lr_img: Annotated[float, Gt(0)] = 1.0
        momentum: Annotated[float, Interval(ge=0, le=1)] = 0.5
        batch_real: Annotated[int, Ge(1)] = 256
        init: Literal["real", "noise"] = "real"
        dsa: bool = True
        #: "auto" = the dataset's default strategy (no flip for digit datasets)
        dsa_strategy: Strategy = "auto"
        model: str = "convnet"
        #: "bf16": the network in bfloat16 autocast (faster, not the reference's numbers;
        #: see ``ddbench.runtime.precision``); "off" = float32 as the reference
        amp: Amp = "off"

    late_params = {"amp": "off"}
    # CPU budget (the embedded default runs in minutes); the reference uses 256 real per class
    presets = {"small": {"iterations": 50, "batch_real": 64}}

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        p = self.params
        data, device = ctx.data, ctx.device
        gen = ctx.generator()
        C = data.num_classes
        images, labels = init_synthetic(ctx, p.init, gen)
        strategy = resolve_strategy(p.dsa_strategy, data.dsa_strategy)
        opt = ctx.image_optimizer(images, p.lr_img, p.momentum)
        resumable = {"images": images, "optimizer": opt, "generator": gen}

        for it in range(ctx.resume(resumable), p.iterations):
            net = ctx.build_model(p.model).to(device)
            net.train()
            for q in net.parameters():
                q.requires_grad_(False)
            real, real_y = sample_per_class(data, p.batch_real, gen)
            real, real_y = real.to(device), real_y.to(device)
            state = gen.get_state()
            syn = images
            if p.dsa:
                syn = diff_augment(images, strategy, groups=labels, generator=gen, num_groups=C)
                gen.set_state(state)  # the real batch gets the same transform per class
                real = diff_augment(real, strategy, groups=real_y, generator=gen, num_groups=C)
            with autocast(device, p.amp):
                loss = self.base_loss(ctx.first_order(net), syn, labels, real, real_y, C)
                if ctx.objectives:
                    loss = loss + ctx.objectives_loss(
                        StepContext(net.features, syn, labels, real, real_y, it, C)
                    )
            ctx.check_finite(loss, it)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ctx.checkpoint(it + 1, resumable)
            ctx.progress(it + 1, p.iterations)
        return SyntheticSet(images.detach().cpu(), labels.cpu())

    def base_loss(self, net, syn, syn_y, real, real_y, num_classes: int) -> torch.Tensor:
        """The distiller's own loss at one step (``mim`` alone replaces it by nothing)."""
        return matching_loss(net, syn, syn_y, real, real_y, num_classes)


def matching_loss(net, syn, syn_y, real, real_y, num_classes: int) -> torch.Tensor:
    """Sum over classes of ||mean embed(real_c) - mean embed(syn_c)||^2 (real side detached),
    in float32 whatever precision the network ran in."""
    mean_real = class_means(net, real, real_y, num_classes)
    emb_syn = net.embed(syn).float()
    sums = torch.zeros(num_classes, emb_syn.shape[1], device=emb_syn.device, dtype=emb_syn.dtype)
    counts = torch.bincount(syn_y, minlength=num_classes).to(emb_syn.dtype).clamp_min(1)
    mean_syn = sums.index_add(0, syn_y, emb_syn) / counts.unsqueeze(1)
    return ((mean_real - mean_syn) ** 2).sum()


@torch.no_grad()
def class_means(net, x, y, num_classes: int) -> torch.Tensor:
    """Per-class mean embedding without a graph, in chunks (see ``ddbench.runtime.allocator``; in one
    forward when the net has batch norm, whose statistics depend on the whole batch)."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    chunk = len(x) if has_bn else inference_chunk(x.device)
    sums = None
    for start in range(0, len(x), chunk):
        emb = net.embed(x[start : start + chunk]).float()
        if sums is None:
            sums = torch.zeros(num_classes, emb.shape[1], device=emb.device, dtype=emb.dtype)
        sums.index_add_(0, y[start : start + chunk], emb)
    counts = torch.bincount(y, minlength=num_classes).to(sums.dtype).clamp_min(1)
    return sums / counts.unsqueeze(1)


@hookimpl
def register_distillers(register):
    register(DM)
