"""ddbench plugin module (entry point ``coreset``): the ``herding`` and ``kcenter`` distillers.

Both keep ``ipc`` real training images per class, chosen on the embeddings of a network
trained on the real data (``features.train_features``); they differ only in the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Ge

import ddbench
from ddbench import DistillContext, Distiller, SyntheticSet
from ddbench_coreset.features import train_features, training_steps
from ddbench_coreset.selection import herding, k_center


class CoresetDistiller(Distiller):
    """Base: per class, select ``ipc`` real images on trained-network features."""

    @dataclass
    class Params:
        #: the feature network; a param named `model` is resolved and built by ddbench
        model: str = "convnet"
        #: passes over the real training set before embedding (0: random-init features)
        feature_epochs: Annotated[int, Ge(0)] = 10

    presets = {"small": {"feature_epochs": 1}}

    #: (features of one class, k) -> indices into them, in selection order
    @staticmethod
    def select(features: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError("a subclass sets select to a selection rule")

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        p, data = self.params, ctx.data
        total = training_steps(len(data.x_train), p.feature_epochs) + data.num_classes
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            ctx.progress(done, total)

        feats = train_features(ctx, p.model, p.feature_epochs, tick)
        picked = []
        for c in range(data.num_classes):
            idx = data.class_indices(c)
            order = self.select(feats[idx.to(feats.device)], ctx.ipc).cpu()
            picked.append(idx[order])
            tick()
        sel = torch.cat(picked)
        return SyntheticSet(
            data.x_train[sel].clone(),
            data.y_train[sel].to(torch.long),
            meta={"train_indices": sel.tolist()},
        )


class Herding(CoresetDistiller):
    """Herding coreset: real images whose running feature mean tracks the class mean (Welling 2009)."""

    name = "herding"
    select = staticmethod(herding)


class KCenter(CoresetDistiller):
    """K-center coreset: farthest-first real images on trained features (Sener & Savarese 2018)."""

    name = "kcenter"
    select = staticmethod(k_center)


@ddbench.hookimpl
def register_distillers(register):
    register(Herding)
    register(KCenter)
