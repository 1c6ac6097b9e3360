"""``dc`` and ``dsa``: dataset condensation by gradient matching (Zhao, Mopuri, Bilen, ICLR
2021) and its differentiable-Siamese-augmentation variant (Zhao & Bilen, ICML 2021).

Faithful to ``VICO-UoE/DatasetCondensation/main.py``: a fresh network every outer
iteration; ``outer_loop`` times: (batch-norm nets: running statistics from 16 real images
per class, then frozen) for each class, the gradient of the CE loss on 256 real images
(detached) is matched by the gradient on the class's synthetic images (``create_graph``)
with the layer-wise distance; one SGD step on the images (lr 0.1, momentum 0.5); then,
except after the last outer step, ``inner_loop`` epochs of training the network on the
synthetic set (plain SGD lr 0.01, batch 256). ``dsa`` applies one Siamese DSA transform
per class to the real and synthetic batch, and per-sample DSA in the inner loop; ``dc``
uses no augmentation during synthesis, as the reference (``dc_aug_param=None``).

An outer iteration is mostly convolutions (profiled at CIFAR-10 shape: 256 real images per
class already make large GEMMs; the synthetic side is ~1% of an IPC-10 iteration), so the
classes stay in the reference's loop, draw for draw: batching them would do the same work,
and with batch norm would change the statistics. What speeds it up is fusing the memory-bound
rest (norm, ReLU, pooling: ~40% of an eager pass on a CPU): the real side's gradients and the
inner loop, differentiated once, run through ``DistillContext.first_order`` (compiled where the
process compiles, see ``ddbench.runtime.compiling``); the synthetic side, differentiated twice, stays eager.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval

from ddbench import hookimpl
from ddbench.builtins.distillers.random import init_synthetic
from ddbench.components import Distiller
from ddbench.context import DistillContext, StepContext
from ddbench.data.sampling import sample_per_class
from ddbench.evaluation.augment import Strategy, diff_augment, resolve_strategy, siamese_groups
from ddbench.evaluation.training import dsa, train_epoch
from ddbench.runtime.precision import Amp, autocast
from ddbench.synthetic import SyntheticSet

#: reference ``get_loops``: ipc -> (outer_loop, inner_loop)
REFERENCE_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
BN_IMAGES_PER_CLASS = 16


def loops_for(ipc: int) -> tuple[int, int]:
    """The reference schedule; an IPC outside it takes the schedule of the nearest listed
    IPC, ties to the smaller (the reference exits instead)."""
    nearest = min(REFERENCE_LOOPS, key=lambda k: (abs(k - ipc), k))
    return REFERENCE_LOOPS[nearest]


def layer_distance(gr: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """Reference ``distance_wb``: sum over output units of 1 - cos(real row, syn row).

    Conv weights are rows of out x (in*h*w), linear weights out x in; 1-D parameters
    (biases, norm affines) contribute nothing.
    """
    if gr.dim() == 1:
        return gs.new_zeros(())
    if gr.dim() == 4:
        gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
    elif gr.dim() == 3:
        gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
    dots = (gr * gs).sum(-1)
    return (1 - dots / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)).sum()


def match_loss(gw_syn, gw_real, metric: str) -> torch.Tensor:
    """Reference ``match_loss``: 'ours' (layer-wise), 'mse' or 'cos' over all gradients."""
    if metric == "ours":
        return sum(layer_distance(r, s) for r, s in zip(gw_real, gw_syn, strict=True))
    real = torch.cat([g.reshape(-1) for g in gw_real])
    syn = torch.cat([g.reshape(-1) for g in gw_syn])
    if metric == "mse":
        return ((syn - real) ** 2).sum()
    return 1 - (real * syn).sum() / (real.norm() * syn.norm() + 1e-6)


def siamese_augment(real, syn, strategy: str, gen: torch.Generator):
    """One DSA transform for a class's real and synthetic batch: the reference gives both the
    same seed; here both calls start from the same generator state."""
    state = gen.get_state()
    real = diff_augment(real, strategy, groups=siamese_groups([len(real)]), generator=gen, num_groups=1)
    gen.set_state(state)
    syn = diff_augment(syn, strategy, groups=siamese_groups([len(syn)]), generator=gen, num_groups=1)
    return real, syn


def class_loss(net, params, real, syn, c: int, syn_y, metric: str, fast=None) -> torch.Tensor:
    """One class's term: the distance of the synthetic images' gradient (kept differentiable)
    to the real batch's (detached). ``fast``: ``net`` for the real side's first-order pass
    (``DistillContext.first_order``); the synthetic side is differentiated twice, so eager."""
    y_real = torch.full((len(real),), c, device=real.device, dtype=torch.long)
    out_real = (net if fast is None else fast)(real)
    gw_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(out_real, y_real), params)]
    gw_syn = torch.autograd.grad(F.cross_entropy(net(syn), syn_y), params, create_graph=True)
    return match_loss(gw_syn, gw_real, metric)


def _batchnorms(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _freeze_bn_statistics(net, bns, data, gen, device) -> None:
    """The reference's BN branch: running statistics from 16 real images per class, then eval."""
    net.train()
    x_bn, _ = sample_per_class(data, BN_IMAGES_PER_CLASS, gen)
    with torch.no_grad():
        net(x_bn.to(device))
    for m in bns:
        m.eval()


class DC(Distiller):
    """Gradient matching (DC, Zhao et al. 2021): synthetic gradients match real ones per class."""

    name = "dc"
    paper_protocol = "dc"

    @dataclass
    class Params:
        iterations: Annotated[int, Ge(1)] = 1000
        lr_img: Annotated[float, Gt(0)] = 0.1
        momentum: Annotated[float, Interval(ge=0, le=1)] = 0.5
        lr_net: Annotated[float, Gt(0)] = 0.01
        batch_real: Annotated[int, Ge(1)] = 256
        batch_train: Annotated[int, Ge(1)] = 256
        init: Literal["noise", "real"] = "noise"
        dis_metric: Literal["ours", "mse", "cos"] = "ours"
        #: 0 = the reference schedule for the IPC (see ``loops_for``)
        outer_loop: Annotated[int, Ge(0)] = 0
        inner_loop: Annotated[int, Ge(0)] = 0
        dsa: bool = False
        #: "auto" = the dataset's default strategy (no flip for digit datasets)
        dsa_strategy: Strategy = "auto"
        model: str = "convnet"
        #: "bf16": the network in bfloat16 autocast, matching and inner loop (faster, not the
        #: reference's numbers; see ``ddbench.runtime.precision``); "off" = float32 as the reference
        amp: Amp = "off"

    late_params = {"amp": "off"}
    presets = {"small": {"iterations": 10, "batch_real": 64}}

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        p = self.params
        data, device, C = ctx.data, ctx.device, ctx.data.num_classes
        gen = ctx.generator()
        images, labels = init_synthetic(ctx, p.init, gen)
        strategy = resolve_strategy(p.dsa_strategy, data.dsa_strategy)
        ref_outer, ref_inner = loops_for(ctx.ipc)
        outer = p.outer_loop or ref_outer
        inner = p.inner_loop or ref_inner
        opt_img = ctx.image_optimizer(images, p.lr_img, p.momentum)
        # the network and its optimiser are new every iteration: not part of the state
        resumable = {"images": images, "optimizer": opt_img, "generator": gen}

        for it in range(ctx.resume(resumable), p.iterations):
            net = ctx.build_model(p.model).to(device)
            net.train()
            fast = ctx.first_order(net)
            params = [q for q in net.parameters() if q.requires_grad]
            opt_net = torch.optim.SGD(params, lr=p.lr_net)
            bns = _batchnorms(net)
            for ol in range(outer):
                if bns:
                    _freeze_bn_statistics(net, bns, data, gen, device)
                with autocast(device, p.amp):
                    loss = self.matching_loss(net, params, data, images, labels, strategy, gen, fast)
                    if ctx.objectives:
                        real_x, real_y = ctx.objective_batch(p.batch_real)
                        loss = loss + ctx.objectives_loss(StepContext(
                            net.features, images, labels, real_x, real_y, it * outer + ol, C))
                ctx.check_finite(loss, it)
                opt_img.zero_grad(set_to_none=True)
                loss.backward()
                opt_img.step()
                if ol == outer - 1:
                    break
                with autocast(device, p.amp):
                    for _ in range(inner):  # the reference's epoch('train'), which unfreezes BN
                        train_epoch(fast, opt_net, images.detach(), labels, p.batch_train,
                                    dsa(strategy if p.dsa else None), gen)
            ctx.checkpoint(it + 1, resumable)
            ctx.progress(it + 1, p.iterations)
        return SyntheticSet(images.detach().cpu(), labels.cpu())

    def matching_loss(self, net, params, data, images, labels, strategy: str, gen, fast=None) -> torch.Tensor:
        """Sum over classes of ``class_loss``, drawing as the reference: per class, the real
        batch, then (``dsa``) one Siamese transform."""
        p, loss = self.params, images.new_zeros(())
        for c in range(data.num_classes):
            real = data.sample_class(c, p.batch_real, gen).to(images.device)
            idx = (labels == c).nonzero().flatten()
            syn = images[idx]
            if p.dsa:
                real, syn = siamese_augment(real, syn, strategy, gen)
            loss = loss + class_loss(net, params, real, syn, c, labels[idx], p.dis_metric, fast)
        return loss


class DSA(DC):
    """DSA (Zhao & Bilen 2021): gradient matching with Siamese augmentation, real init."""

    name = "dsa"
    paper_protocol = "dsa"

    @dataclass
    class Params(DC.Params):
        init: Literal["noise", "real"] = "real"
        dsa: bool = True


@hookimpl
def register_distillers(register):
    register(DC)
    register(DSA)
