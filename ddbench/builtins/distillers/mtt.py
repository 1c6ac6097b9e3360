"""``mtt``: Matching Training Trajectories (Cazenavette et al., CVPR 2022), faithful to
``GeorgeCazenavette/mtt-distillation`` (``buffer.py`` for the experts, ``distill.py``).

Each iteration picks an expert trajectory (cycling through the experts in a shuffled
order), a start epoch ``s ~ U{0, .., max_start_epoch - 1}``, and unrolls a student from the
expert's parameters at epoch ``s``: ``syn_steps`` SGD steps on minibatches of ``batch_syn``
synthetic images (a random permutation cut into chunks, per-sample DSA), with the learnable
lr ``syn_lr``. The loss
``||theta_N - theta_{s+M}||^2 / ||theta_s - theta_{s+M}||^2`` is backpropagated through the
whole unroll to the images (SGD, lr ``lr_img``, momentum 0.5) and to ``syn_lr`` (SGD,
``lr_lr``, momentum 0.5). The reference keeps the unrolled graph (``create_graph``), memory
linear in ``syn_steps``; by default we recompute one step's graph at a time in the backward
(:func:`match_backward`): the same gradients, memory flat in ``syn_steps``. The student is a functional call over one flat parameter vector
(the reference's ``ReparamModule``). The set carries its learned lr for evaluation.

Experts come from :mod:`ddbench.evaluation.experts`, trained by the harness on demand (or with
``ddbench experts``) and cached. ``expert_lr`` is the lr the experts were trained with
(``buffer.py --lr_teacher``, 0.01); ``lr_teacher`` is the initial ``syn_lr``
(``distill.py --lr_teacher``): the sources' tables use the same flag name for both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval
from torch.func import functional_call

from ddbench import hookimpl
from ddbench.builtins.distillers.random import init_synthetic
from ddbench.components import Distiller
from ddbench.context import DistillContext, StepContext
from ddbench.errors import DDBenchError
from ddbench.evaluation.augment import Strategy, diff_augment, resolve_strategy
from ddbench.evaluation.experts import ExpertRecipe
from ddbench.runtime.allocator import glibc_defaults
from ddbench.synthetic import SyntheticSet

#: ``paper`` preset: the per-setting table that the MTT authors gave DC-BENCH
#: (REFERENCE.md 7.3(a)); (dataset, ipc) -> values. Rows marked ZCA there expect
#: ``--conditions zca``. Settings not in the table keep the reference defaults.
PAPER_TABLE: dict[tuple[str, int], dict] = {
    ("cifar10", 1): dict(syn_steps=50, expert_epochs=2, max_start_epoch=2, lr_img=100.0, lr_lr=1e-7, lr_teacher=0.01),
    ("cifar10", 10): dict(syn_steps=30, expert_epochs=2, max_start_epoch=20, lr_img=100.0, lr_lr=1e-5, lr_teacher=0.001),
    ("cifar10", 50): dict(syn_steps=30, expert_epochs=2, max_start_epoch=40, lr_img=1000.0, lr_lr=1e-5, lr_teacher=0.001),
    ("cifar100", 1): dict(syn_steps=20, expert_epochs=3, max_start_epoch=20, lr_img=1000.0, lr_lr=1e-5, lr_teacher=0.01),
    ("cifar100", 10): dict(syn_steps=20, expert_epochs=2, max_start_epoch=20, lr_img=1000.0, lr_lr=1e-5, lr_teacher=0.01),
    ("cifar100", 50): dict(syn_steps=80, expert_epochs=2, max_start_epoch=40, lr_img=1000.0, lr_lr=1e-5, lr_teacher=0.01, batch_syn=125),
}


class Student:
    """A network evaluated functionally at a flat parameter vector (``ReparamModule``)."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        #: the same function for steps differentiated once (the recompute forward), compiled
        #: where the process compiles (``DistillContext.first_order``)
        self.first_order = self
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        self.sizes = [p.numel() for _, p in net.named_parameters()]
        self.num_params = sum(self.sizes)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(flat, self.sizes)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes, strict=True)}

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, self.unflatten(flat), (x,))

    def features(self, flat: torch.Tensor):
        """``x -> per-block features`` of the network at ``flat`` (for objectives)."""
        params = self.unflatten(flat)

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.nn.utils.stateless._reparametrize_module(self.net, params):
                return self.net.features(x)

        return run


def _batches(n: int, steps: int, batch_syn: int, device, gen: torch.Generator):
    """The minibatch index of each student step: random permutations cut into chunks, as the
    reference does."""
    order: list[torch.Tensor] = []
    for _ in range(steps):
        if not order:
            order = list(torch.randperm(n, generator=gen).to(device).split(batch_syn))
        yield order.pop(0)


def _step_grad(student: Student, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
               idx: torch.Tensor, strategy: str | None, gen: torch.Generator | None,
               create_graph: bool) -> torch.Tensor:
    """The gradient of the student's cross-entropy on one (augmented) minibatch at ``theta``."""
    x = images[idx]
    if strategy is not None:
        x = diff_augment(x, strategy, generator=gen)
    ce = F.cross_entropy((student if create_graph else student.first_order)(theta, x), labels[idx])
    (grad,) = torch.autograd.grad(ce, theta, create_graph=create_graph)
    return grad


def unroll(student: Student, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
           syn_lr: torch.Tensor, steps: int, batch_syn: int, strategy: str | None,
           gen: torch.Generator) -> torch.Tensor:
    """``steps`` differentiable SGD steps from ``start`` on the synthetic set; returns theta_N
    with the whole unrolled graph attached (the reference's way: memory grows with steps)."""
    theta = start.requires_grad_(True)
    for idx in _batches(len(images), steps, batch_syn, images.device, gen):
        theta = theta - syn_lr * _step_grad(student, theta, images, labels, idx, strategy, gen, True)
    return theta


#: how the trajectory loss is differentiated through the unroll
BACKPROP = ("recompute", "full", "tesla")


def match_backward(student: Student, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                   syn_lr: torch.Tensor, steps: int, batch_syn: int, strategy: str | None,
                   gen: torch.Generator, loss_fn, backprop: str = "recompute") -> torch.Tensor:
    """Unroll the student, compute ``loss_fn(theta_N)`` and accumulate its gradients into
    ``.grad`` of the images, ``syn_lr`` and whatever else ``loss_fn`` uses; returns the loss.

    ``full`` backpropagates through the whole unrolled graph (memory linear in ``steps``).
    ``recompute`` gives the same gradients (to float error) in memory flat in ``steps``: the
    forward keeps only each step's parameters (and the generator state its augmentation drew
    from); the backward rebuilds one step's graph at a time and carries the adjoint
    ``a_k = a_{k+1} - lr H_k a_{k+1}`` (a Hessian-vector product), adding
    ``-lr d(g_k . a_{k+1})/dx`` to the images and ``-g_k . a_{k+1}`` to the lr.
    ``tesla`` is TESLA's approximation (Cui et al. 2023): the same sweep with the cross-step
    terms dropped (``a_k = a_N`` for every step), cheaper and not exact.
    """
    if backprop == "full":
        loss = loss_fn(unroll(student, start, images, labels, syn_lr, steps, batch_syn, strategy, gen))
        loss.backward()
        return loss
    lr = syn_lr.detach()
    thetas, batches, states = [], [], []
    theta = start.detach()
    for idx in _batches(len(images), steps, batch_syn, images.device, gen):
        thetas.append(theta)
        batches.append(idx)
        states.append(gen.get_state() if strategy is not None else None)
        theta = theta.requires_grad_(True)
        grad = _step_grad(student, theta, images.detach(), labels, idx, strategy, gen, False)
        theta = (theta - lr * grad).detach()
    leaf = theta.requires_grad_(True)
    loss = loss_fn(leaf)
    loss.backward()
    adjoint = leaf.grad.detach()
    replay = torch.Generator(device=gen.device)
    for theta, idx, state in zip(reversed(thetas), reversed(batches), reversed(states), strict=True):
        if state is not None:
            replay.set_state(state)
        theta = theta.requires_grad_(True)
        grad = _step_grad(student, theta, images, labels, idx, strategy, replay, True)
        dot = (grad * adjoint).sum()
        if backprop == "tesla":
            (g_img,) = torch.autograd.grad(dot, [images])
        else:
            g_theta, g_img = torch.autograd.grad(dot, [theta, images])
            adjoint = adjoint - lr * g_theta
        _accumulate(images, -lr * g_img)
        if syn_lr.requires_grad:
            _accumulate(syn_lr, -dot.detach())
    return loss


def _accumulate(leaf: torch.Tensor, grad: torch.Tensor) -> None:
    leaf.grad = grad.detach().clone() if leaf.grad is None else leaf.grad + grad.detach()


def trajectory_loss(theta_n: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||theta_N - target||^2 / ||start - target||^2`` (the reference's num_params cancels)."""
    return ((theta_n - target) ** 2).sum() / ((start - target) ** 2).sum()


class MTT(Distiller):
    """Trajectory matching (MTT, Cazenavette et al. 2022): unrolled student vs expert epochs."""

    name = "mtt"
    paper_protocol = "mtt"
    learns_lr = True

    @dataclass
    class Params:
        iterations: Annotated[int, Ge(1)] = 5000
        syn_steps: Annotated[int, Ge(1)] = 20
        expert_epochs: Annotated[int, Ge(1)] = 3
        #: the start epoch is drawn from 0 .. max_start_epoch - 1
        max_start_epoch: Annotated[int, Ge(1)] = 25
        lr_img: Annotated[float, Gt(0)] = 1000.0
        #: 0 = the synthetic lr stays at lr_teacher
        lr_lr: Annotated[float, Ge(0)] = 1e-5
        #: initial synthetic lr (``distill.py --lr_teacher``)
        lr_teacher: Annotated[float, Gt(0)] = 0.01
        momentum: Annotated[float, Interval(ge=0, le=1)] = 0.5
        #: real images per class handed to objectives (e.g. ``+mim``) at each iteration
        batch_real: Annotated[int, Ge(1)] = 256
        #: 0 = all synthetic images per student step (the reference default)
        batch_syn: Annotated[int, Ge(0)] = 0
        init: Literal["real", "noise"] = "real"
        #: gradient through the unroll: "recompute" (exact, memory flat in syn_steps), "full"
        #: (the reference's whole graph), "tesla" (TESLA's approximation without cross-step terms)
        backprop: Literal["recompute", "full", "tesla"] = "recompute"
        dsa: bool = True
        #: "auto" = the dataset's default strategy (no flip for digit datasets)
        dsa_strategy: Strategy = "auto"
        model: str = "convnet"
        # the expert trajectories (``buffer.py``); these form the buffer's cache key
        num_experts: Annotated[int, Ge(1)] = 100
        train_epochs: Annotated[int, Ge(1)] = 50
        expert_lr: Annotated[float, Gt(0)] = 0.01
        expert_momentum: Annotated[float, Interval(ge=0, le=1)] = 0.0
        expert_weight_decay: Annotated[float, Ge(0)] = 0.0
        expert_batch: Annotated[int, Ge(1)] = 256
        #: 0 = every training image; else at most this many per class
        expert_images_per_class: Annotated[int, Ge(0)] = 0
        expert_seed: int = 0

    presets = {
        "small": {"iterations": 50, "syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 3,
                  "lr_img": 100.0, "num_experts": 2, "train_epochs": 5, "expert_images_per_class": 500},
    }

    @classmethod
    def preset_values(cls, preset: str, dataset: str, ipc: int | None) -> dict:
        values = dict(super().preset_values(preset, dataset, ipc))
        if preset == "paper":
            values.update(PAPER_TABLE.get((dataset, ipc), {}))
        return values

    def expert_recipe(self, data, models: dict[str, dict]) -> ExpertRecipe:
        p = self.params
        if p.max_start_epoch < 1 or p.max_start_epoch - 1 + p.expert_epochs > p.train_epochs:
            raise DDBenchError(
                f"mtt needs max_start_epoch - 1 + expert_epochs <= train_epochs and max_start_epoch >= 1; "
                f"got max_start_epoch={p.max_start_epoch}, expert_epochs={p.expert_epochs}, "
                f"train_epochs={p.train_epochs}")
        return ExpertRecipe(
            model=p.model, model_params=json.dumps(models[p.model], sort_keys=True),
            num_experts=p.num_experts, epochs=p.train_epochs, lr=p.expert_lr,
            momentum=p.expert_momentum, weight_decay=p.expert_weight_decay, batch=p.expert_batch,
            dsa=p.dsa, dsa_strategy=resolve_strategy(p.dsa_strategy, data.dsa_strategy),
            images_per_class=p.expert_images_per_class, seed=p.expert_seed,
        )

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        # the unrolled graph keeps syn_steps x activations alive between temporaries: on the
        # tuned heap that fragments (see ddbench.runtime.allocator), so large blocks use mmap here
        with glibc_defaults():
            return self._distill(ctx)

    def _distill(self, ctx: DistillContext) -> SyntheticSet:
        p = self.params
        data, device = ctx.data, ctx.device
        buffer = ctx.experts
        if buffer is None:
            raise RuntimeError("mtt needs expert trajectories; the runner provides them")
        gen = ctx.generator()
        images, labels = init_synthetic(ctx, p.init, gen)
        strategy = resolve_strategy(p.dsa_strategy, data.dsa_strategy) if p.dsa else None
        syn_lr = torch.tensor(p.lr_teacher, device=device).requires_grad_(True)
        opt_img = ctx.image_optimizer(images, p.lr_img, p.momentum)
        opt_lr = torch.optim.SGD([syn_lr], lr=p.lr_lr, momentum=p.momentum)
        student = Student(ctx.build_model(p.model).to(device))
        student.first_order = ctx.first_order(student)
        batch_syn = p.batch_syn or len(images)
        # the student is built before resuming: the global RNG it drew from is then restored
        resumable = {"images": images, "optimizer": opt_img, "syn_lr": syn_lr, "lr_optimizer": opt_lr,
                     "generator": gen, "order": [], "last_loss": None}
        for it in range(ctx.resume(resumable), p.iterations):
            if not resumable["order"]:  # the experts' shuffled order, left over from earlier iterations
                resumable["order"] = torch.randperm(p.num_experts, generator=gen).tolist()
            expert = resumable["order"].pop(0)
            start_epoch = int(torch.randint(0, p.max_start_epoch, (1,), generator=gen))
            start, target = (t.to(device) for t in buffer.read(expert, [start_epoch, start_epoch + p.expert_epochs]))

            loss_fn = partial(self._loss, ctx, student, images, labels, start, target, it)
            opt_img.zero_grad(set_to_none=True)
            opt_lr.zero_grad(set_to_none=True)
            loss = match_backward(student, start.clone(), images, labels, syn_lr, p.syn_steps, batch_syn,
                                  strategy, gen, loss_fn, p.backprop)
            opt_img.step()
            opt_lr.step()
            resumable["last_loss"] = loss.item()
            ctx.checkpoint(it + 1, resumable)
            ctx.progress(it + 1, p.iterations)
        return SyntheticSet(images.detach().cpu(), labels.cpu(), lr=syn_lr.item(),
                            meta={"final_loss": resumable["last_loss"]})

    def _loss(self, ctx: DistillContext, student: Student, images, labels, start, target, it: int,
              theta_n: torch.Tensor) -> torch.Tensor:
        """The trajectory loss at the student's end point plus the attached objectives'."""
        loss = trajectory_loss(theta_n, start, target)
        if ctx.objectives:
            real, real_y = ctx.objective_batch(self.params.batch_real)
            loss = loss + ctx.objectives_loss(StepContext(
                student.features(theta_n), images, labels, real, real_y, it, ctx.data.num_classes,
                real_features=student.features(target)))
        ctx.check_finite(loss, it)
        return loss


@hookimpl
def register_distillers(register):
    register(MTT)
