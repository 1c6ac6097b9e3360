"""What an evaluation network is trained to predict: hard labels, soft labels, or a teacher's.

Three label modes of the evaluation protocol (``eval.labels``), as DD-Ranking
(NUS-HPC-AI-Lab/DD-Ranking, arXiv 2505.13300) separates them:

- ``hard``: cross-entropy on each image's class (the DC/DSA/DM/MTT protocols).
- ``soft``: one soft label per image, fixed for the whole training (DD-Ranking's mode
  "S"; DATM, TESLA): the set's own soft labels, or, for a set that has none (``random``,
  hard-label methods), the teacher's logits on its un-augmented images, computed once.
- ``teacher``: every augmented training batch is relabelled by a teacher trained on the
  full real training split (DD-Ranking's mode "M"; SRe2L, RDED).

Soft targets are logits; probabilities are turned into logits by ``log`` (so that a
temperature tempers them the same way). The losses are DD-Ranking's ``kl`` (KL divergence
of the student's from the target's tempered distribution, ``batchmean``) and ``sce`` (soft
cross-entropy), both without the optional T² scaling (its ``scale_loss`` default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddbench.synthetic import SyntheticSet

MODES = ("hard", "soft", "teacher")
LOSSES = ("kl", "sce")


def kl_loss(student: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = F.log_softmax(student / temperature, dim=1)
    q = F.softmax(target_logits / temperature, dim=1)
    # F.kl_div(log_p, q, reduction="batchmean") op for op; spelled out because vmap (batched
    # evaluation) has no batching rule for aten::kl_div and would loop over the networks
    return (torch.xlogy(q, q) - q * log_p).sum() / len(student)


def sce_loss(student: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = F.log_softmax(student / temperature, dim=1)
    q = F.softmax(target_logits / temperature, dim=1)
    return -(q * log_p).sum() / len(student)


def loss_fn(params) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of protocol parameters ``params`` (``ProtocolParams``)."""
    if params.labels == "hard":
        return F.cross_entropy
    base = kl_loss if params.soft_loss == "kl" else sce_loss
    t = params.temperature
    return lambda out, target: base(out, target, t)


def as_logits(synset: SyntheticSet) -> torch.Tensor | None:
    """The set's soft labels as logits (``log`` of probabilities; zeros become -inf, which
    the tempered softmax maps back to zero), or None when it has none."""
    soft = synset.soft_labels
    if soft is None:
        return None
    soft = soft.detach().float()
    return soft if synset.soft_kind == "logits" else soft.log()


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    teacher.eval()
    return torch.cat([teacher(x[s : s + chunk]) for s in range(0, len(x), chunk)]) if len(x) else x.new_zeros(0)


def training_targets(synset: SyntheticSet, params, x: torch.Tensor, teacher: torch.nn.Module | None):
    """``(targets, relabel)`` for training on ``x`` (the set's images on the device):
    ``targets`` indexed like ``x`` (hard labels, or soft-label logits), and ``relabel``
    (an augmented batch -> its targets) for the teacher mode, else None."""
    mode = params.labels
    if mode == "hard":
        return synset.labels.to(x.device), None
    if mode == "soft":
        logits = as_logits(synset)
        if logits is not None:
            return logits.to(x.device), None
        if teacher is None:
            raise ValueError("eval.labels=soft: the set has no soft labels and no teacher was planned for it")
        return teacher_logits(teacher, x), None
    if teacher is None:
        raise ValueError("eval.labels=teacher needs a teacher, and none was planned")
    return synset.labels.to(x.device), lambda xb: teacher_logits(teacher, xb)
