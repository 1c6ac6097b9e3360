"""``+mim``: MIM4DD's mutual-information objective (Shang, Yuan, Yan, NeurIPS 2023).

The paper's code is not public; this follows REFERENCE.md sections 1, 2 and 11 (what the
paper and its reviews state, and CRD/CMIM, the first author's contrastive code). Per chosen
layer k of the network the distiller uses at this step: features of the synthetic images
(with gradients) and of a real batch (without: the network is only a feature extractor),
optional average pooling, one head per side g_phi (linear or MLP, then L2 normalisation),
critic cos / tau, positives = same-class (synthetic, real) pairs, and an MI lower bound from
the chosen estimator. L_MIM = -sum_k beta^-(K-1-k) I_k (deepest layer weight 1, the
CMIM-style geometric weighting; unverified for MIM4DD), added to the distiller's loss
with weight lambda (0.8, beta 2.0: the reviews' Eq. 17).

Heads are trained by default (CRD; CMIM leaves them as fixed random projections:
``train_heads=false``) with their own Adam: the distiller's backward fills their
gradients, and the objective applies them at its next call (a one-step lag, so any
distiller works unchanged and the image optimiser never sees them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt
from torch import nn

from ddbench import hookimpl
from ddbench.components import Objective
from ddbench.context import DistillContext, StepContext

#: generator salt of the heads' initialisation (distinct from every distiller's stream)
HEAD_SALT = 4_004


@dataclass
class MIMParams:
    #: weight of L_MIM in L_DD + lambda * L_MIM (reviews: 0.8)
    lambda_: Annotated[float, Ge(0)] = 0.8
    #: layer k of K weighs beta^-(K-1-k): the deepest 1 (reviews: 2.0)
    beta: Annotated[float, Gt(0)] = 2.0
    #: critic temperature: d = cos / tau (CMIM 0.1, CRD 0.07)
    tau: Annotated[float, Gt(0)] = 0.1
    #: a registered MI estimator: nce (CRD binary NCE), infonce, nwj, mine, jsd
    estimator: str = "nce"
    #: g_phi: linear + L2 norm (CRD/CMIM), a 2-layer MLP + L2 norm, or none (cosine of features)
    head: Literal["linear", "mlp", "none"] = "linear"
    head_dim: Annotated[int, Ge(1)] = 128
    #: average-pool feature maps to at most pool x pool before the head (0 = flatten all)
    pool: Annotated[int, Ge(0)] = 4
    #: the deepest ``layers`` blocks of the network (0 = all)
    layers: Annotated[int, Ge(0)] = 0
    train_heads: bool = True
    head_lr: Annotated[float, Gt(0)] = 1e-3


class Head(nn.Module):
    """g_phi: pooled, flattened features -> L2-normalised embedding."""

    def __init__(self, in_dim: int, kind: str, dim: int, pool: int):
        super().__init__()
        self.pool = pool
        if kind == "linear":
            self.net = nn.Linear(in_dim, dim)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        else:
            self.net = nn.Identity()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(pooled(f, self.pool).flatten(1)), dim=1)


def pooled(f: torch.Tensor, pool: int) -> torch.Tensor:
    if pool <= 0 or f.dim() != 4:
        return f
    return F.adaptive_avg_pool2d(f, (min(pool, f.shape[2]), min(pool, f.shape[3])))


class MIM(Objective):
    """MIM4DD: contrastive MI lower bound between synthetic and real per-layer features."""

    name = "mim"
    Params = MIMParams
    references = {"estimator": "mi_estimators"}

    def __init__(self, params=None):
        super().__init__(params if params is not None else MIMParams())
        self._ctx: DistillContext | None = None
        self._heads: nn.ModuleList | None = None
        self._estimators: list = []
        self._opt: torch.optim.Optimizer | None = None
        self._last: dict[str, float] = {}
        self._resumed: dict | None = None  # a checkpoint's state, loaded once the heads exist

    def setup(self, ctx: DistillContext) -> None:
        self._ctx = ctx

    def weight(self) -> float:
        return self.params.lambda_

    def layer_weights(self, k: int) -> list[float]:
        return [self.params.beta ** -(k - 1 - i) for i in range(k)]

    def _build(self, syn_feats: list[torch.Tensor], device) -> None:
        """Heads (two per layer: synthetic and real side) and one estimator per layer."""
        p, ctx = self.params, self._ctx
        if ctx is None:
            raise RuntimeError("mim: setup(ctx) was not called before loss()")
        with torch.random.fork_rng(devices=[]):  # the distiller's global RNG stays untouched
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=ctx.generator(HEAD_SALT))))
            heads = []
            for f in syn_feats:
                in_dim = pooled(f.detach()[:1], p.pool).flatten(1).shape[1]
                heads += [Head(in_dim, p.head, p.head_dim, p.pool), Head(in_dim, p.head, p.head_dim, p.pool)]
        self._heads = nn.ModuleList(heads).to(device)
        params = list(self._heads.parameters())
        if p.train_heads and params:
            self._opt = torch.optim.Adam(params, lr=p.head_lr)
        else:
            self._heads.requires_grad_(False)
        self._estimators = [ctx.component("mi_estimators", p.estimator) for _ in syn_feats]
        if self._resumed is not None:
            self._restore(self._resumed, device)
            self._resumed = None

    def state_dict(self) -> dict:
        """Heads, their Adam state, the gradients of the last backward (applied at the next
        ``loss``: the one-step lag) and the estimators' running statistics."""
        if self._heads is None:
            return {}
        return {"heads": self._heads, "opt": self._opt,
                "grads": [q.grad for q in self._heads.parameters()],
                "estimators": [e.state_dict() for e in self._estimators]}

    def load_state_dict(self, state: dict) -> None:
        # the heads are built at the first loss (their sizes come from the features)
        self._resumed = state or None

    def _restore(self, state: dict, device) -> None:
        self._heads.load_state_dict(state["heads"])
        for q, g in zip(self._heads.parameters(), state["grads"], strict=True):
            q.grad = None if g is None else g.to(device)
        if self._opt is not None:
            self._opt.load_state_dict(state["opt"])
        for est, s in zip(self._estimators, state["estimators"], strict=True):
            est.load_state_dict({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in s.items()})

    def loss(self, step: StepContext) -> torch.Tensor:
        p = self.params
        syn_feats = step.features(step.syn_images)
        real_net = step.real_features or step.features
        with torch.no_grad():
            real_feats = real_net(step.real_images)
        first = len(syn_feats) - p.layers if 0 < p.layers <= len(syn_feats) else 0
        syn_feats, real_feats = syn_feats[first:], real_feats[first:]
        if self._heads is None:  # (a resumed run's heads come back with pending gradients)
            self._build(syn_feats, step.syn_images.device)
        if self._opt is not None:  # apply the gradient of the previous backward (none at first)
            self._opt.step()
            self._opt.zero_grad(set_to_none=True)
        positive = step.syn_labels[:, None] == step.real_labels[None, :]
        total = step.syn_images.new_zeros(())
        last = {}
        for i, (fs, fr, w) in enumerate(zip(syn_feats, real_feats, self.layer_weights(len(syn_feats)),
                                            strict=True)):
            zs, zr = self._heads[2 * i](fs), self._heads[2 * i + 1](fr.detach())
            scores = zs.float() @ zr.float().T / p.tau  # fp32: exp(1/tau) overflows fp16
            mi = self._estimators[i].estimate(scores, positive)
            total = total - w * mi
            last[f"mi_l{first + i + 1}"] = mi.item()
        ceiling = math.log(step.num_classes)
        est_ceiling = self._estimators[-1].ceiling(positive)
        last["ceiling"] = ceiling if est_ceiling is None else min(ceiling, est_ceiling)
        self._last = last
        return total

    def scalars(self) -> dict[str, float]:
        return self._last


@hookimpl
def register_objectives(register):
    register(MIM)
