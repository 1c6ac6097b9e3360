"""``random``: real training images drawn per class, the standard baseline of DD tables."""

from __future__ import annotations

import torch

from ddbench import hookimpl
from ddbench.components import DistillContext, Distiller, SyntheticSet


def sample_real(ctx: DistillContext, generator: torch.Generator) -> SyntheticSet:
    """``ipc`` random real images of every class (also the ``init real`` of DM/DC/MTT)."""
    images, labels = [], []
    for c in range(ctx.data.num_classes):
        x = ctx.data.sample_class(c, ctx.ipc, generator)
        images.append(x)
        labels.append(torch.full((len(x),), c, dtype=torch.long))
    return SyntheticSet(torch.cat(images).clone(), torch.cat(labels))


class Random(Distiller):
    """Random real images per class (the 'Random' row of DD tables)."""

    name = "random"

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        return sample_real(ctx, ctx.generator())


@hookimpl
def register_distillers(register):
    register(Random)
