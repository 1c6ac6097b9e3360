"""Batched evaluation: the ``num_eval`` networks of one cell group trained together.

Parameters stacked, one ``vmap``-ed forward and backward per batch, ``torch.optim.SGD``'s
update op for op; each network draws from its own generator in ``evaluate``'s order, so it
sees exactly the batches that ``ddbench.evaluation.protocol.evaluate`` would show it alone. Used when
``eval.batched`` is on (``ProtocolParams.batches_on``: by default on CUDA only).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.modules.dropout import _DropoutNd

from ddbench.data.bundle import DataBundle
from ddbench.evaluation import labels
from ddbench.evaluation.protocol import Protocol, augmenter, evaluate, schedule
from ddbench.evaluation.training import generator
from ddbench.runtime.allocator import inference_chunk
from ddbench.synthetic import SyntheticSet


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
    epochs, lr = schedule(synset, p)
    augment = augmenter(p, data)
    x = synset.images.detach().to(device)
    y, relabel = labels.training_targets(synset, p, x, teacher)
    gens = [generator(seed) for seed in seeds]
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
