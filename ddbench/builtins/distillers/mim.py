"""``mim``: the MIM4DD objective alone, without a base method (the reviewers' ablation).

DM's loop (a fresh random frozen ConvNet per iteration, a real batch per class, Siamese
DSA, image SGD) with DM's class-mean matching removed, so the synthetic images move only
by the MI objective. Its parameters are DM's and the ``+mim`` objective's (``--set
mim.tau=0.2`` means the same thing here and in ``dm+mim``); lambda only scales the step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ddbench import hookimpl
from ddbench.builtins.distillers.dm import DM
from ddbench.builtins.objectives.mim import MIM, MIMParams
from ddbench.context import DistillContext
from ddbench.synthetic import SyntheticSet


class MIMAlone(DM):
    """MIM4DD's MI objective alone on DM's loop of random networks (no base loss)."""

    name = "mim"
    references = MIM.references

    @dataclass
    class Params(DM.Params, MIMParams):
        pass

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        mim = MIM(self.params)
        mim.setup(ctx)
        return super().distill(dataclasses.replace(ctx, objectives=[mim, *ctx.objectives]))

    def base_loss(self, net, syn, syn_y, real, real_y, num_classes: int) -> torch.Tensor:
        return syn.new_zeros(())


@hookimpl
def register_distillers(register):
    register(MIMAlone)
