"""The evaluation protocol: train a fresh network on a synthetic set, test on real data.

Faithful to the reference ``evaluate_synset`` (DC/DSA/DM/MTT repos): SGD momentum 0.9,
weight decay 5e-4, batch 256, cross-entropy, ``epochs + 1`` passes with the lr x0.1 (and
a fresh optimizer, as the reference re-creates it) after pass ``epochs // 2 + 1``,
per-sample DSA augmentation (or DC's augmentation, ``dc_aug``), test accuracy once at the
end. A learned lr carried by the synthetic set (MTT) replaces ``lr``. The protocol is
named (``ddbench.protocols``: ddbench's uniform one or a paper's own), versioned and
hashed; results of different protocols are never pooled.

``evaluate_many`` trains the ``num_eval`` networks of one cell group together (parameters
stacked, one ``vmap``-ed forward and backward per batch, the same SGD update), each with
its own generator, so each sees exactly the batches that ``evaluate`` would show it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.modules.dropout import _DropoutNd

from ddbench import labels
from ddbench.allocator import inference_chunk
from ddbench.augment import Strategy, diff_augment, resolve_strategy
from ddbench.compiling import first_order
from ddbench.components import SyntheticSet
from ddbench.data.bundle import DataBundle
from ddbench.dc_augment import DC_OPS, dc_augment
from ddbench.keys import digest
from ddbench.params import Check

NAME = "ddbench-eval"
#: bump when a change to the code below can change accuracies
VERSION = 1
NAMESPACE = "eval"


def _dc_aug_ok(value: str) -> bool:
    return value in ("off", "auto", "none") or all(op in DC_OPS for op in value.split("_"))


@dataclass
class ProtocolParams:
    #: passes are epochs + 1 (the reference's count), so 0 still trains one pass
    epochs: Annotated[int, Ge(0)] = 1000
    lr: Annotated[float, Gt(0)] = 0.01
    momentum: Annotated[float, Interval(ge=0, le=1)] = 0.9
    weight_decay: Annotated[float, Ge(0)] = 5e-4
    batch: Annotated[int, Ge(1)] = 256
    num_eval: Annotated[int, Ge(1)] = 5
    dsa: bool = True
    #: "auto" = the dataset's default strategy (no flip for digit datasets)
    dsa_strategy: Strategy = "auto"
    #: train a cell group's networks together (``evaluate_many``): "on", "off", or "auto" =
    #: on for CUDA devices only (on a 2-core CPU batching measured 1.2-1.9x slower)
    batched: Literal["auto", "on", "off"] = "auto"
    #: which protocol (``ddbench.protocols``): a named one, or "method" = each method's own
    #: paper's; stored as the protocol's name, not as a parameter
    protocol: Literal["method", "uniform", "dc", "dsa", "dm", "mtt"] = "uniform"
    #: DC's augmentation when ``dsa`` is off (``ddbench.dc_augment``): "off", "auto" (the
    #: reference's choice for the dataset and model, resolved at planning) or a strategy
    dc_aug: Annotated[str, Check(_dc_aug_ok, "off, auto, none or ops joined by '_' from " + ", ".join(DC_OPS))] = "off"
    #: what the networks learn (``ddbench.labels``): "hard" labels, the set's "soft" labels
    #: (a teacher's for a set without), or a "teacher"'s on every augmented batch
    labels: Literal["hard", "soft", "teacher"] = "hard"
    #: soft-label loss: "kl" (KL divergence) or "sce" (soft cross-entropy), DD-Ranking's
    soft_loss: Literal["kl", "sce"] = "kl"
    temperature: Annotated[float, Gt(0)] = 1.0
    #: the teacher (``ddbench.teacher``): a registered model, trained on the real split
    teacher: str = "convnet"
    teacher_epochs: Annotated[int, Ge(1)] = 50

    def batches_on(self, device: torch.device) -> bool:
        return self.batched == "on" or (self.batched == "auto" and device.type == "cuda")


#: how many runs and how they are scheduled, not what each computes: outside the hash
NOT_RECIPE = ("num_eval", "batched")
#: parameters added after results were stored -> the value that reproduces the earlier
#: protocol: left out of the stored parameters and the hash at that value
_LATE = {"dc_aug": "off", "labels": "hard"}
#: parameters that matter only with soft or teacher labels: left out under hard labels
_SOFT_ONLY = ("soft_loss", "temperature", "teacher", "teacher_epochs")
#: what the networks learn, and how their training images are augmented
LABEL_PARAMS = ("labels", *_SOFT_ONLY)
AUGMENT_PARAMS = ("dsa", "dsa_strategy", "dc_aug")
#: ``dc_aug`` values that mean no DC augmentation
_NO_DC_AUG = ("off", "none", "")


def label_mode(stored: dict) -> str:
    """The label mode of a protocol's stored parameters (``Protocol.as_dict``)."""
    return stored.get("labels", "hard")


def augments(stored: dict) -> bool:
    """Whether a protocol's stored parameters augment the training images (DSA or DC's)."""
    return bool(stored.get("dsa", True)) or stored.get("dc_aug", "off") not in _NO_DC_AUG


#: preset -> overrides of the defaults above: "paper" evaluates each method under its own
#: paper's protocol, "small" under the uniform one at CPU budgets
PRESETS = {"paper": {"protocol": "method"}, "small": {"epochs": 100, "num_eval": 2}}


@dataclass(frozen=True)
class Protocol:
    """A concrete protocol: its name and version (``ddbench.protocols``) and parameters."""

    params: ProtocolParams
    preset: str
    name: str = NAME
    version: int = VERSION

    @property
    def label(self) -> str:
        """``name/vN``, and ``+soft``/``+teacher`` when not trained on hard labels: tables
        keep label modes apart, as they do protocols."""
        mode = self.params.labels
        return f"{self.name}/v{self.version}" + ("" if mode == "hard" else f"+{mode}")

    def as_dict(self) -> dict:
        hard = self.params.labels == "hard"
        params = {k: v for k, v in dataclasses.asdict(self.params).items()
                  if k != "protocol" and not (k in _LATE and _LATE[k] == v) and not (hard and k in _SOFT_ONLY)}
        return {"name": self.name, "version": self.version, **params}

    @property
    def hash(self) -> str:
        recipe = {k: v for k, v in self.as_dict().items() if k not in NOT_RECIPE}
        return digest(recipe, 16)


def evaluate(
    net: torch.nn.Module,
    synset: SyntheticSet,
    data: DataBundle,
    protocol: Protocol,
    seed: int,
    device: torch.device,
    progress=lambda step, total: None,
    teacher: torch.nn.Module | None = None,
) -> float:
    """Train ``net`` (freshly initialised) on ``synset``; return test accuracy in [0, 1].
    ``teacher``: the network behind soft/teacher labels (``ddbench.labels``)."""
    p = protocol.params
    gen = _generator(seed)
    augment = augmenter(p, data)
    x = synset.images.detach().to(device)
    y, relabel = labels.training_targets(synset, p, x, teacher)
    loss_fn = labels.loss_fn(p)
    epochs, lr = _schedule(synset, p)
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=p.momentum, weight_decay=p.weight_decay)
    decay_at = epochs // 2 + 1
    fast = first_order(net, device, data.image_size)
    for ep in range(epochs + 1):
        loss = train_epoch(fast, opt, x, y, p.batch, augment, gen, loss_fn, relabel)
        if ep == decay_at:
            lr *= 0.1
            opt = torch.optim.SGD(
                net.parameters(), lr=lr, momentum=p.momentum, weight_decay=p.weight_decay
            )
        progress(ep + 1, epochs + 1)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"evaluation training loss is {float(loss)}")
    return test_accuracy(fast, data, device)


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _schedule(synset: SyntheticSet, p: ProtocolParams) -> tuple[int, float]:
    """Epochs and initial lr: the synthetic set's own (``full``, MTT) override the protocol's."""
    epochs = synset.epochs if synset.epochs is not None else p.epochs
    lr = synset.lr if synset.lr is not None else p.lr
    return epochs, lr


def augmenter(p: ProtocolParams, data: DataBundle):
    """The training augmentation of protocol ``p``: DSA, DC's, or None."""
    if p.dsa:
        return dsa(resolve_strategy(p.dsa_strategy, data.dsa_strategy))
    if p.dc_aug == "auto":
        raise ValueError("eval.dc_aug='auto' must be resolved at planning (ddbench.protocols.specialise)")
    if p.dc_aug not in _NO_DC_AUG:
        return lambda xb, gen, strategy=p.dc_aug: dc_augment(xb, strategy, gen)
    return None


def dsa(strategy: str | None):
    """Per-sample (non-Siamese) DSA with ``strategy`` as a ``train_epoch`` augmentation."""
    if strategy is None:
        return None
    return lambda xb, gen: diff_augment(xb, strategy, generator=gen)


def train_epoch(net, opt, x, y, batch: int, augment, gen, loss_fn=F.cross_entropy, relabel=None) -> torch.Tensor:
    """The reference ``epoch('train', ...)``: one shuffled pass; ``augment(batch, gen)``
    (``dsa(strategy)``, DC's augmentation, or None) on every batch. ``y`` holds hard labels
    or soft-label logits for ``loss_fn``; ``relabel(augmented batch)`` replaces them
    (teacher labels)."""
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


# --------------------------------------------------------------------------- batched


def batchable(net: torch.nn.Module) -> bool:
    """Whether ``net`` trains the same under ``vmap``: a pure function of its parameters and
    input. Buffers rule it out (BatchNorm updates its running statistics in place in train
    mode), and so does dropout (``vmap`` would draw other random numbers than ``evaluate``)."""
    if next(net.buffers(), None) is not None:
        return False
    return not any(isinstance(m, _DropoutNd) for m in net.modules())


def _stackable(nets: list[torch.nn.Module]) -> bool:
    """Two or more batchable nets of one architecture (same class, parameter names, shapes)."""
    shapes = [[(n, p.shape) for n, p in net.named_parameters()] for net in nets]
    return (len(nets) > 1 and all(batchable(net) for net in nets)
            and len({type(net) for net in nets}) == 1 and all(s == shapes[0] for s in shapes))


def evaluate_many(
    nets: list[torch.nn.Module],
    synset: SyntheticSet,
    data: DataBundle,
    protocol: Protocol,
    seeds: list[int],
    device: torch.device,
    progress=lambda step, total: None,
    teacher: torch.nn.Module | None = None,
) -> list[float]:
    """``[evaluate(net, ..., seed) for net, seed in zip(nets, seeds)]``, trained together.

    Net i draws its permutations and DSA parameters from its own ``seeds[i]`` generator in
    ``evaluate``'s order, so it sees exactly the batches it would see alone; the parameters
    are stacked and trained with one vmapped forward and backward per batch and
    ``torch.optim.SGD``'s update. Accuracies match ``evaluate`` up to float rounding. Soft
    labels are gathered per net like hard ones; under teacher labels the teacher relabels all
    nets' augmented batches in one forward. Nets that are not ``batchable`` (BatchNorm,
    dropout) are evaluated one after another. The nets are trained in place, as by ``evaluate``.
    ``progress`` counts the group's passes.
    """
    if len(nets) != len(seeds):
        raise ValueError(f"{len(nets)} networks but {len(seeds)} seeds")
    if not _stackable(nets):
        return _one_by_one(nets, synset, data, protocol, seeds, device, progress, teacher)
    p = protocol.params
    stack = _Stack([net.to(device) for net in nets], labels.loss_fn(p))
    epochs, lr = _schedule(synset, p)
    augment = augmenter(p, data)
    x = synset.images.detach().to(device)
    y, relabel = labels.training_targets(synset, p, x, teacher)
    gens = [_generator(seed) for seed in seeds]
    opt = _SGD(stack.tensors, lr, p.momentum, p.weight_decay)
    decay_at = epochs // 2 + 1
    for ep in range(epochs + 1):
        losses = _train_epoch_many(stack, opt, x, y, p.batch, augment, gens, relabel)
        if ep == decay_at:  # a fresh optimizer, as in evaluate: momentum starts over
            opt = _SGD(stack.tensors, opt.lr * 0.1, p.momentum, p.weight_decay)
        progress(ep + 1, epochs + 1)
    _check_losses(losses)
    stack.write_back(nets)
    return _test_accuracies(stack, data, device)


def _one_by_one(nets, synset, data, protocol, seeds, device, progress, teacher=None) -> list[float]:
    """The fallback: ``evaluate`` per net, with one progress count over all of them."""
    out = []
    for i, (net, seed) in enumerate(zip(nets, seeds, strict=True)):
        def step(done, total, i=i):
            progress(i * total + done, len(nets) * total)

        out.append(evaluate(net, synset, data, protocol, seed, device, progress=step, teacher=teacher))
    return out


class _Stack:
    """The nets' parameters stacked along a leading axis, run through one ``vmap``;
    ``loss_fn(logits, targets)`` is the protocol's training loss (``labels.loss_fn``)."""

    def __init__(self, nets: list[torch.nn.Module], loss_fn=F.cross_entropy):
        params, _ = stack_module_state(nets)  # new leaf tensors that require grad
        self.params = params
        self.tensors = list(params.values())
        self.size = len(nets)
        self.base = copy.deepcopy(nets[0]).to("meta")  # the architecture; holds no values
        self.loss_fn = loss_fn

    def _call(self, params, x):
        return functional_call(self.base, params, (x,))

    def losses(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Each net's loss on its own batch: xb (N, B, ...), yb (N, B) hard labels or
        (N, B, classes) soft-label logits."""
        self.base.train()
        return vmap(lambda p, x, y: self.loss_fn(self._call(p, x), y))(self.params, xb, yb)

    def logits(self, xb: torch.Tensor) -> torch.Tensor:
        """Every net on the same images xb (B, ...): (N, B, classes)."""
        self.base.eval()
        return vmap(self._call, in_dims=(0, None))(self.params, xb)

    @torch.no_grad()
    def write_back(self, nets: list[torch.nn.Module]) -> None:
        for i, net in enumerate(nets):
            for name, p in net.named_parameters():
                p.copy_(self.params[name][i])


class _SGD:
    """``torch.optim.SGD``'s update (``_single_tensor_sgd``, no dampening or Nesterov) on
    stacked tensors, op for op; momentum buffers start empty, as in a new optimizer."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, weight_decay: float):
        self.params, self.lr, self.momentum, self.weight_decay = params, lr, momentum, weight_decay
        self.bufs: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self, grads) -> None:
        for i, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                if self.bufs[i] is None:
                    self.bufs[i] = grad.detach().clone()
                else:
                    self.bufs[i].mul_(self.momentum).add_(grad)  # dampening 0
                grad = self.bufs[i]
            param.add_(grad, alpha=-self.lr)


def _train_epoch_many(stack: _Stack, opt: _SGD, x, y, batch: int, augment, gens, relabel=None) -> torch.Tensor:
    """``train_epoch`` for every net at once; each generator is drawn from in its order.
    ``relabel`` (teacher labels) sees all nets' augmented batches in one call."""
    perms = [torch.randperm(len(x), generator=g).to(x.device) for g in gens]
    for start in range(0, len(x), batch):
        idx = [perm[start : start + batch] for perm in perms]
        xb = torch.stack([x[i] if augment is None else augment(x[i], g) for i, g in zip(idx, gens, strict=True)])
        if relabel is None:
            yb = torch.stack([y[i] for i in idx])
        else:
            yb = relabel(xb.flatten(0, 1)).unflatten(0, xb.shape[:2])
        losses = stack.losses(xb, yb)
        opt.step(torch.autograd.grad(losses.sum(), stack.tensors))
    return losses.detach()


def _check_losses(losses: torch.Tensor) -> None:
    """``evaluate``'s check of the last loss; one diverged net fails the whole group."""
    for i, loss in enumerate(losses.tolist()):
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"evaluation training loss is {loss} (network {i + 1} of {len(losses)} trained together)")


@torch.no_grad()
def _test_accuracies(stack: _Stack, data: DataBundle, device) -> list[float]:
    """``test_accuracy`` of every net; chunks shrink with the group so memory stays level."""
    batch = max(1, inference_chunk(device) // stack.size)
    correct = torch.zeros(stack.size, dtype=torch.long, device=device)
    for start in range(0, len(data.x_test), batch):
        xb = data.x_test[start : start + batch].to(device)
        yb = data.y_test[start : start + batch].to(device)
        correct += (stack.logits(xb).argmax(2) == yb).sum(1)
    return [c / len(data.x_test) for c in correct.tolist()]
