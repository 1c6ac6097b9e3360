"""``random``: real training images drawn per class, the standard baseline of DD tables."""

from __future__ import annotations

import torch

from ddbench import hookimpl
from ddbench.components import Distiller
from ddbench.context import DistillContext
from ddbench.data.sampling import sample_per_class
from ddbench.synthetic import SyntheticSet


def sample_real(ctx: DistillContext, generator: torch.Generator) -> SyntheticSet:
    """``ipc`` random real images of every class (also the ``init real`` of DM/DC/MTT)."""
    x, y = sample_per_class(ctx.data, ctx.ipc, generator)
    return SyntheticSet(x.clone(), y)


def init_synthetic(ctx: DistillContext, how: str, generator: torch.Generator):
    """Initial synthetic images on ``ctx.device``, requiring grad, and their labels:
    ``real`` (random real images per class) or ``noise`` (N(0, 1), the DC default); a class
    gets ``ctx.class_ipcs()`` images either way."""
    if how == "real":
        images, labels = sample_per_class(ctx.data, ctx.ipc, generator)
        images = images.clone()
    else:
        # per-class counts: ipc, or fewer for a class smaller than ipc (see class_ipcs)
        labels = torch.arange(ctx.data.num_classes).repeat_interleave(torch.tensor(ctx.class_ipcs()))
        images = torch.randn((len(labels), ctx.data.channels, *ctx.data.image_size), generator=generator)
    return images.to(ctx.device).requires_grad_(True), labels.to(ctx.device)


class Random(Distiller):
    """Random real images per class (the 'Random' row of DD tables)."""

    name = "random"

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        return sample_real(ctx, ctx.generator())


@hookimpl
def register_distillers(register):
    register(Random)
