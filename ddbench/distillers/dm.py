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
from typing import Literal

import torch

from ddbench import hookimpl
from ddbench.augment import diff_augment
from ddbench.components import DistillContext, Distiller, StepContext, SyntheticSet
from ddbench.distillers.random import sample_real

REAL_CHUNK = 1024  # real images per no-grad forward: bounds activation memory


class DM(Distiller):
    """Distribution matching: class-mean embeddings of random frozen ConvNets (Zhao & Bilen 2023)."""

    name = "dm"

    @dataclass
    class Params:
        iterations: int = 20000
        lr_img: float = 1.0
        momentum: float = 0.5
        batch_real: int = 256
        init: Literal["real", "noise"] = "real"
        dsa: bool = True
        #: "auto" = the dataset's default strategy (no flip for digit datasets)
        dsa_strategy: str = "auto"
        model: str = "convnet"

    # CPU budget (the embedded default runs in minutes); the reference uses 256 real per class
    presets = {"small": {"iterations": 50, "batch_real": 64}}

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        p = self.params
        data, device = ctx.data, ctx.device
        gen = ctx.generator()
        C = data.num_classes
        if p.init == "real":
            init = sample_real(ctx, gen)
            images, labels = init.images, init.labels
        else:
            labels = torch.arange(C).repeat_interleave(ctx.ipc)
            images = torch.randn((len(labels), data.channels, *data.image_size), generator=gen)
        images = images.to(device).requires_grad_(True)
        labels = labels.to(device)
        strategy = data.dsa_strategy if p.dsa_strategy == "auto" else p.dsa_strategy
        opt = torch.optim.SGD([images], lr=p.lr_img, momentum=p.momentum)
        extra = [q for obj in ctx.objectives for q in obj.setup(ctx)]
        if extra:
            opt.add_param_group({"params": extra})
        syn_counts = torch.bincount(labels, minlength=C).to(device=device, dtype=images.dtype)

        for it in range(p.iterations):
            net = ctx.build_model(p.model).to(device)
            net.train()
            for q in net.parameters():
                q.requires_grad_(False)
            real, real_y = self._real_batch(ctx, gen)
            real, real_y = real.to(device), real_y.to(device)
            state = gen.get_state()
            syn = images
            if p.dsa:
                syn = diff_augment(images, strategy, groups=labels, generator=gen, num_groups=C)
                gen.set_state(state)  # the real batch gets the same transform per class
                real = diff_augment(real, strategy, groups=real_y, generator=gen, num_groups=C)
            mean_real = self._class_means(net, real, real_y, C)
            emb_syn = net.embed(syn)
            mean_syn = torch.zeros(C, emb_syn.shape[1], device=device, dtype=emb_syn.dtype)
            mean_syn = mean_syn.index_add(0, labels, emb_syn) / syn_counts.unsqueeze(1)
            loss = ((mean_real - mean_syn) ** 2).sum()
            if ctx.objectives:
                loss = loss + ctx.objectives_loss(
                    StepContext(net.features, syn, labels, real, real_y, it, C)
                )
            ctx.check_finite(loss, it)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ctx.progress(it + 1, p.iterations)
        return SyntheticSet(images.detach().cpu(), labels.cpu())

    def _real_batch(self, ctx: DistillContext, gen: torch.Generator):
        xs, ys = [], []
        for c in range(ctx.data.num_classes):
            x = ctx.data.sample_class(c, self.params.batch_real, gen)
            xs.append(x)
            ys.append(torch.full((len(x),), c, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys)

    @staticmethod
    @torch.no_grad()
    def _class_means(net, real, real_y, C):
        sums = None
        for start in range(0, len(real), REAL_CHUNK):
            emb = net.embed(real[start : start + REAL_CHUNK])
            if sums is None:
                sums = torch.zeros(C, emb.shape[1], device=emb.device, dtype=emb.dtype)
            sums.index_add_(0, real_y[start : start + REAL_CHUNK], emb)
        counts = torch.bincount(real_y, minlength=C).to(sums.dtype).clamp_min(1)
        return sums / counts.unsqueeze(1)


@hookimpl
def register_distillers(register):
    register(DM)
