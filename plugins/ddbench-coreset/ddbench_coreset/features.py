"""The feature extractor both coreset methods share: a network trained on the real data.

As in the coreset baselines of DD tables, images are selected on the embeddings of the
same architecture that is later evaluated, first trained on the whole real training set.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddbench import DistillContext

BATCH = 256
LR = 0.01
MOMENTUM = 0.9
#: images per no-grad forward when embedding the training set: bounds activation memory
EMBED_CHUNK = 1024


def training_steps(num_images: int, epochs: int) -> int:
    """SGD steps ``train_features`` takes (for progress totals)."""
    return epochs * math.ceil(num_images / BATCH)


def train_features(
    ctx: DistillContext, model: str, epochs: int, tick: Callable[[], None] = lambda: None
) -> torch.Tensor:
    """Embeddings (N, D), on ``ctx.device``, of every training image of ``ctx.data``.

    The network is ``ctx.build_model(model)`` (initialised from the global torch RNG that
    ddbench seeds per cell), trained for ``epochs`` passes over the real training set:
    SGD lr 0.01 momentum 0.9, batch 256, cross-entropy, no augmentation, batches shuffled
    with ``ctx.generator()``. ``tick`` is called after each step.
    """
    if epochs < 0:
        raise ValueError(f"feature_epochs must be >= 0, got {epochs}")
    data, device = ctx.data, ctx.device
    net = ctx.build_model(model).to(device)
    gen = ctx.generator()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    n = len(data.x_train)
    net.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, BATCH):
            idx = perm[start : start + BATCH]
            xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)
            loss = F.cross_entropy(net(xb), yb)
            ctx.check_finite(loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tick()
    return embed(net, data.x_train, device)


@torch.no_grad()
def embed(net: torch.nn.Module, x: torch.Tensor, device, chunk: int = EMBED_CHUNK) -> torch.Tensor:
    """``net.embed`` of ``x`` in eval mode, without a graph, ``chunk`` images at a time."""
    net.eval()
    out = [net.embed(x[s : s + chunk].to(device)) for s in range(0, len(x), chunk)]
    return torch.cat(out) if out else torch.zeros(0, 0, device=device)
