"""Mutual-information lower bounds from critic scores (component kind ``mi_estimators``).

Every estimator takes ``scores[i, j]``, the critic value of anchor i with candidate j, and
a boolean ``positive`` mask of the same shape, and returns a differentiable estimate in
nats; maximising it trains the critic (and whatever produced the scores). Several
positives per anchor are allowed: MIM4DD's positives are same-class (synthetic, real)
pairs.

Joint samples are the positive pairs. Samples of the product of marginals are *all*
(anchor, candidate) pairs of the batch, other-class and same-class alike: leaving the
same-class ones out would bound a divergence that is infinite for class-level positives,
whereas with them every estimate bounds I(anchor; candidate), which for label-defined
positives is at most H(class) = log C. (smile-mi-estimator uses the off-diagonal pairs for
instance-level positives; with K candidates the difference is O(1/K).)

Everything is computed in log space (``logsumexp``), never ``exp`` then ``log``.
References: REFERENCE.md section 11; Poole et al. 2019; ``ermongroup/smile-mi-estimator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Interval

from ddbench import hookimpl
from ddbench.components import MIEstimator


def _check(scores: torch.Tensor, positive: torch.Tensor) -> None:
    if scores.dim() != 2 or positive.shape != scores.shape or positive.dtype != torch.bool:
        raise ValueError(f"expected 2-D scores and a bool mask of the same shape, got "
                         f"{tuple(scores.shape)} and {positive.dtype} {tuple(positive.shape)}")
    if not positive.any():
        raise ValueError("no positive pair in the batch")


def log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    """log(mean(exp(x))) over all entries, stably."""
    return torch.logsumexp(x.reshape(-1), 0) - math.log(x.numel())


def _anchors(scores, positive):
    """Rows with at least one positive, as float masks."""
    rows = positive.any(1)
    return scores[rows], positive[rows].to(scores.dtype)


class InfoNCE(MIEstimator):
    """InfoNCE (van den Oord et al. 2018), multi-positive; at most log(K / positives per anchor)."""

    name = "infonce"

    def estimate(self, scores, positive):
        _check(scores, positive)
        s, pos = _anchors(scores, positive)
        log_ratio = s - (torch.logsumexp(s, 1, keepdim=True) - math.log(s.shape[1]))
        return ((log_ratio * pos).sum(1) / pos.sum(1)).mean()

    def ceiling(self, positive):
        pos = positive[positive.any(1)].sum(1).double()
        return float(torch.log(positive.shape[1] / pos).mean())


def nwj_bound(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """E_P[f] - E_Q[e^(f-1)], the marginal over all pairs."""
    return scores[positive].mean() - torch.exp(log_mean_exp(scores) - 1)


class NWJ(MIEstimator):
    """NWJ / f-divergence bound (Nguyen, Wainwright, Jordan 2010): E_P[f] - E_Q[e^(f-1)]."""

    name = "nwj"

    def estimate(self, scores, positive):
        _check(scores, positive)
        return nwj_bound(scores, positive)


class _EMALogMeanExp(torch.autograd.Function):
    """log mean exp(t) whose gradient divides by a moving average of mean exp(t) (MINE)."""

    @staticmethod
    def forward(ctx, t, log_running):
        ctx.save_for_backward(t, log_running)
        return log_mean_exp(t)

    @staticmethod
    def backward(ctx, grad):
        t, log_running = ctx.saved_tensors
        return grad * torch.exp(t - log_running) / t.numel(), None


class MINE(MIEstimator):
    """Donsker-Varadhan E_P[T] - log E_Q[e^T] with MINE's moving-average gradient (Belghazi et al. 2018)."""

    name = "mine"

    @dataclass
    class Params:
        #: weight of the newest batch in the moving average of E_Q[e^T] (mine-pytorch: 0.01)
        alpha: Annotated[float, Interval(gt=0, le=1)] = 0.01

    def __init__(self, params=None):
        super().__init__(params if params is not None else self.Params())
        self._log_running: torch.Tensor | None = None

    def estimate(self, scores, positive):
        _check(scores, positive)
        current = log_mean_exp(scores.detach())
        if self._log_running is None:
            self._log_running = current
        else:
            a = self.params.alpha
            self._log_running = torch.logaddexp(self._log_running + math.log1p(-a), current + math.log(a))
        return scores[positive].mean() - _EMALogMeanExp.apply(scores, self._log_running.to(scores.dtype))

    def state_dict(self):
        return {"log_running": self._log_running}

    def load_state_dict(self, state):
        self._log_running = state["log_running"]


class JSD(MIEstimator):
    """Jensen-Shannon gradients (Hjelm et al. 2019), NWJ value at T + 1 (Poole et al.'s I_JS).

    The JS critic's optimum is T* = log p/q and NWJ's is 1 + log p/q, so the value is
    NWJ(T + 1): tight at the JS optimum (NWJ(T) would sit 1/e below the truth there)."""

    name = "jsd"

    def estimate(self, scores, positive):
        _check(scores, positive)
        js = -F.softplus(-scores[positive]).mean() - F.softplus(scores).mean()
        return js + (nwj_bound(scores + 1, positive) - js).detach()


class NCE(MIEstimator):
    """Binary NCE with CRD's critic h = (e^s/Z) / (e^s/Z + N/M): log N + E_P[log h] + N E_Q[log(1-h)].

    A lower bound for any critic, and the loss CRD/CMIM minimise; at the optimal critic the
    negatives' term costs about E_Q[p/q] = 1 nat, so it sits near I - 1 (CRD quotes the
    looser-looking log N + E_P[log h*], a bound only at the optimum)."""

    name = "nce"

    @dataclass
    class Params:
        #: Z = mean(e^s) * M on every batch, or set once on the first (CRD, CMIM: stale as
        #: soon as the network changes, and DM/DC draw a new one every iteration)
        normalizer: Literal["batch", "first"] = "batch"

    def __init__(self, params=None):
        super().__init__(params if params is not None else self.Params())
        self._log_mean: torch.Tensor | None = None

    def estimate(self, scores, positive):
        _check(scores, positive)
        p = self.params
        s, pos = _anchors(scores, positive)
        n = s.shape[1]  # noise samples per anchor: every candidate (the product of marginals)
        if self._log_mean is None or p.normalizer == "batch":
            self._log_mean = log_mean_exp(scores.detach())
        # log(e^s / Z) - log(N / M) with Z = mean(e^s) M: CRD's M (dataset size) cancels
        logit = s - self._log_mean.to(s.dtype) - math.log(n)
        j = (F.logsigmoid(logit) * pos).sum(1) / pos.sum(1) + F.logsigmoid(-logit).sum(1)
        return math.log(n) + j.mean()

    def state_dict(self):
        return {"log_mean": self._log_mean}  # the "first" normaliser's fixed Z

    def load_state_dict(self, state):
        self._log_mean = state["log_mean"]


BUILTIN = (InfoNCE, NWJ, MINE, JSD, NCE)


@hookimpl
def register_mi_estimators(register):
    for cls in BUILTIN:
        register(cls)
