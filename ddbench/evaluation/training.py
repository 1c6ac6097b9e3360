"""The one training loop: SGD over shuffled passes of a tensor set, optional per-batch
augmentation and label mode, the learning rate x0.1 once.

Evaluation (a fresh network on a synthetic set), teachers (a network on the real split) and
expert trajectories (MTT's ``buffer.py``) all train this way; they differ only in what
``Recipe`` and the callbacks say: how many passes, when (if ever) the lr decays, what the
targets are, and what is kept after each pass. The decay re-creates the optimizer (fresh
momentum), as the reference ``evaluate_synset`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddbench.evaluation.augment import diff_augment
from ddbench.runtime.compiling import first_order


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: ``passes`` over the data; after pass ``decay_after``
    (0-based; None = never) the lr becomes ``lr * 0.1`` with a new optimizer."""

    passes: int
    lr: float
    momentum: float
    weight_decay: float
    batch: int
    decay_after: int | None = None


def fit(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    gen: torch.Generator,
    device: torch.device,
    image_size: tuple[int, int],
    augment=None,
    loss_fn=F.cross_entropy,
    relabel=None,
    after_pass: Callable[[int, torch.Tensor], None] = lambda i, loss: None,
    fast=None,
) -> torch.Tensor:
    """Train ``net`` (already on ``device``) by ``recipe``; ``after_pass(i, loss)`` runs
    after each pass (progress, divergence checks, trajectories). ``fast``: ``net``'s
    compiled passes when the caller goes on using them (``first_order``). Returns the last
    loss."""
    lr = recipe.lr

    def optimizer():
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)

    opt = optimizer()
    if fast is None:
        fast = first_order(net, device, image_size)
    loss = torch.tensor(float("nan"))
    for i in range(recipe.passes):
        loss = train_epoch(fast, opt, x, y, recipe.batch, augment, gen, loss_fn, relabel)
        after_pass(i, loss)
        if i == recipe.decay_after:
            lr *= 0.1
            opt = optimizer()
    return loss


def train_epoch(net, opt, x, y, batch: int, augment, gen, loss_fn=F.cross_entropy, relabel=None) -> torch.Tensor:
    """The reference ``epoch('train', ...)``: one shuffled pass; ``augment(batch, gen)``
    (DSA, DC's augmentation, or None) on every batch. ``y`` holds hard labels or soft-label
    logits for ``loss_fn``; ``relabel(augmented batch)`` replaces them (teacher labels)."""
    net.train()
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    for start in range(0, len(x), batch):
        idx = perm[start : start + batch]
        xb = x[idx]
        if augment is not None:
            xb = augment(xb, gen)
        target = y[idx] if relabel is None else relabel(xb)
        loss = loss_fn(net(xb), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss


def generator(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def dsa(strategy: str | None):
    """Per-sample (non-Siamese) DSA with ``strategy`` as a ``train_epoch`` augmentation."""
    if strategy is None:
        return None
    return lambda xb, gen: diff_augment(xb, strategy, generator=gen)
