"""The evaluation protocol: train a fresh network on a synthetic set, test on real data.

Faithful to the reference ``evaluate_synset`` (DC/DSA/DM/MTT repos): SGD momentum 0.9,
weight decay 5e-4, batch 256, cross-entropy, ``epochs + 1`` passes with the lr x0.1 (and
a fresh optimizer, as the reference re-creates it) after pass ``epochs // 2 + 1``,
per-sample DSA augmentation, test accuracy once at the end. A learned lr carried by the
synthetic set (MTT) replaces ``lr``. The protocol is versioned and hashed; results of
different protocols are never pooled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddbench.allocator import inference_chunk
from ddbench.augment import diff_augment, resolve_strategy
from ddbench.components import SyntheticSet
from ddbench.data.bundle import DataBundle

NAME = "ddbench-eval"
#: bump when a change to the code below can change accuracies
VERSION = 1
NAMESPACE = "eval"


@dataclass
class ProtocolParams:
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 256
    num_eval: int = 5
    dsa: bool = True
    #: "auto" = the dataset's default strategy (no flip for digit datasets)
    dsa_strategy: str = "auto"


#: preset -> overrides of the defaults above (the defaults are the reference's, i.e. "paper")
PRESETS = {"paper": {}, "small": {"epochs": 100, "num_eval": 2}}


@dataclass(frozen=True)
class Protocol:
    params: ProtocolParams
    preset: str

    @property
    def label(self) -> str:
        return f"{NAME}/v{VERSION}"

    def as_dict(self) -> dict:
        return {"name": NAME, "version": VERSION, **dataclasses.asdict(self.params)}

    @property
    def hash(self) -> str:
        # num_eval is how many runs, not how each run is done: not part of the recipe
        recipe = {k: v for k, v in self.as_dict().items() if k != "num_eval"}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def evaluate(
    net: torch.nn.Module,
    synset: SyntheticSet,
    data: DataBundle,
    protocol: Protocol,
    seed: int,
    device: torch.device,
    progress=lambda step, total: None,
) -> float:
    """Train ``net`` (freshly initialised) on ``synset``; return test accuracy in [0, 1]."""
    p = protocol.params
    gen = torch.Generator()
    gen.manual_seed(seed)
    strategy = resolve_strategy(p.dsa_strategy, data.dsa_strategy)
    x = synset.images.detach().to(device)
    y = synset.labels.to(device)
    epochs = synset.epochs if synset.epochs is not None else p.epochs
    lr = synset.lr if synset.lr is not None else p.lr
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=p.momentum, weight_decay=p.weight_decay)
    decay_at = epochs // 2 + 1
    for ep in range(epochs + 1):
        loss = train_epoch(net, opt, x, y, p.batch, strategy if p.dsa else None, gen)
        if ep == decay_at:
            lr *= 0.1
            opt = torch.optim.SGD(
                net.parameters(), lr=lr, momentum=p.momentum, weight_decay=p.weight_decay
            )
        progress(ep + 1, epochs + 1)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"evaluation training loss is {float(loss)}")
    return test_accuracy(net, data, device)


def train_epoch(net, opt, x, y, batch: int, dsa_strategy: str | None, gen) -> torch.Tensor:
    """The reference ``epoch('train', ...)``: one shuffled pass, per-sample DSA if given."""
    net.train()
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    for start in range(0, len(x), batch):
        idx = perm[start : start + batch]
        xb = x[idx]
        if dsa_strategy is not None:
            xb = diff_augment(xb, dsa_strategy, generator=gen)
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss


@torch.no_grad()
def test_accuracy(net, data: DataBundle, device) -> float:
    net.eval()
    batch = inference_chunk(device)
    correct = 0
    for start in range(0, len(data.x_test), batch):
        xb = data.x_test[start : start + batch].to(device)
        yb = data.y_test[start : start + batch].to(device)
        correct += int((net(xb).argmax(1) == yb).sum())
    return correct / len(data.x_test)
