"""The evaluation protocol: train a fresh network on a synthetic set, test on real data.

Faithful to the reference ``evaluate_synset`` (DC/DSA/DM/MTT repos): SGD momentum 0.9,
weight decay 5e-4, batch 256, cross-entropy, ``epochs + 1`` passes with the lr x0.1 (and
a fresh optimizer, as the reference re-creates it) after pass ``epochs // 2 + 1``,
per-sample DSA augmentation (or DC's augmentation, ``dc_aug``), test accuracy once at the
end. A learned lr carried by the synthetic set (MTT) replaces ``lr``. The protocol is
named (a registered ``ProtocolSpec``: ddbench's uniform one or a paper's own), versioned and
hashed; results of different protocols are never pooled. A paper's protocol run with other
values than its published ones (``deviations``) is labelled with a star, ``dsa-eval/v1*``,
and is never compared with the paper's numbers.

``ddbench.evaluation.batched.evaluate_many`` trains the ``num_eval`` networks of one cell group
together (``eval.batched``); this module holds the protocol and the one-network path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from annotated_types import Ge, Gt, Interval

from ddbench.data.bundle import DataBundle
from ddbench.errors import choices_error
from ddbench.evaluation import labels
from ddbench.evaluation.augment import Strategy, resolve_strategy
from ddbench.evaluation.dc_augment import DC_OPS, dc_augment, dc_strategy
from ddbench.evaluation.training import Recipe, dsa, fit, generator
from ddbench.keys import digest
from ddbench.params import Check
from ddbench.runtime.allocator import inference_chunk
from ddbench.runtime.compiling import first_order
from ddbench.synthetic import SyntheticSet

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
    #: which protocol: a registered ``ProtocolSpec`` (``ddbench list protocols``), or
    #: "method" = each method's own paper's; stored as the protocol's name, not as a parameter
    protocol: str = "uniform"
    #: DC's augmentation when ``dsa`` is off (``ddbench.evaluation.dc_augment``): "off", "auto" (the
    #: reference's choice for the dataset and model, resolved at planning) or a strategy
    dc_aug: Annotated[str, Check(_dc_aug_ok, "off, auto, none or ops joined by '_' from " + ", ".join(DC_OPS))] = "off"
    #: what the networks learn (``ddbench.evaluation.labels``): "hard" labels, the set's "soft" labels
    #: (a teacher's for a set without), or a "teacher"'s on every augmented batch
    labels: Literal["hard", "soft", "teacher"] = "hard"
    #: soft-label loss: "kl" (KL divergence) or "sce" (soft cross-entropy), DD-Ranking's
    soft_loss: Literal["kl", "sce"] = "kl"
    temperature: Annotated[float, Gt(0)] = 1.0
    #: the teacher (``ddbench.evaluation.teacher``): a registered model, trained on the real split
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


def make_label(name: str, version: int, mode: str = "hard", star: bool = False) -> str:
    """``name/vN``; ``*`` when a paper's protocol departs from its published values; then
    ``+soft``/``+teacher`` when not trained on hard labels: tables keep all three apart."""
    return f"{name}/v{version}" + ("*" if star else "") + ("" if mode == "hard" else f"+{mode}")


def unstarred(stored_label: str) -> str:
    """A stored label without its star: ``dsa-eval/v1*+soft`` -> ``dsa-eval/v1+soft``."""
    return stored_label.replace("*", "")


def starred(stored_label: str) -> str:
    """The starred form of a stored label (idempotent): the star goes before the label mode."""
    head, sep, mode = unstarred(stored_label).partition("+")
    return f"{head}*{sep}{mode}"


@dataclass(frozen=True)
class Protocol:
    """A concrete protocol: its stored name and version (its ``ProtocolSpec``) and parameters.
    ``deviations``: "k=v" for each value that departs from a paper's published protocol (see
    ``deviations``); it stars the label and stays out of ``as_dict`` and ``hash``, so keys do not move."""

    params: ProtocolParams
    preset: str
    name: str = NAME
    version: int = VERSION
    deviations: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return make_label(self.name, self.version, self.params.labels, bool(self.deviations))

    def as_dict(self) -> dict:
        hard = self.params.labels == "hard"
        params = {k: v for k, v in dataclasses.asdict(self.params).items()
                  if k != "protocol" and not (k in _LATE and _LATE[k] == v) and not (hard and k in _SOFT_ONLY)}
        return {"name": self.name, "version": self.version, **params}

    @property
    def hash(self) -> str:
        recipe = {k: v for k, v in self.as_dict().items() if k not in NOT_RECIPE}
        return digest(recipe, 16)


def from_stored(stored: dict) -> ProtocolParams:
    """The parameters behind a stored ``as_dict`` (those left out at their neutral values come
    back as the defaults); keys this version does not know are ignored."""
    known = {f.name for f in dataclasses.fields(ProtocolParams)}
    return ProtocolParams(**{k: v for k, v in stored.items() if k in known})


#: what never makes results of a paper's protocol incomparable with its numbers: which protocol
#: (its name says it), scheduling, and the label mode (the label says it: ``+soft``)
_NOT_DEVIATIONS = ("protocol", "batched", *LABEL_PARAMS)


def canonical(spec, dataset: str, model: str, model_params: dict) -> ProtocolParams:
    """A paper's protocol as published, for one dataset and evaluation model: the defaults,
    its values and its rules, nothing from a preset or ``--set``."""
    return specialise(ProtocolParams(), spec, set(), dataset, model, model_params)


def deviations(spec, params: ProtocolParams, dataset: str, model: str,
               model_params: dict) -> dict[str, tuple]:
    """field -> (published value, value in ``params``) where ``params`` depart from ``spec``'s
    published protocol for this cell, ``num_eval`` included (a paper's std is over its count of
    networks); empty for a protocol without published values (``uniform``)."""
    if not spec.published:
        return {}
    want = canonical(spec, dataset, model, model_params)
    return {f.name: (getattr(want, f.name), getattr(params, f.name)) for f in dataclasses.fields(ProtocolParams)
            if f.name not in _NOT_DEVIATIONS and getattr(want, f.name) != getattr(params, f.name)}


def overrides(devs: dict[str, tuple]) -> tuple[str, ...]:
    """``deviations`` as "k=v" strings, the form ``Protocol.deviations`` holds."""
    return tuple(f"{k}={actual}" for k, (_, actual) in devs.items())


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
    ``teacher``: the network behind soft/teacher labels (``ddbench.evaluation.labels``)."""
    p = protocol.params
    gen = generator(seed)
    augment = augmenter(p, data)
    x = synset.images.detach().to(device)
    y, relabel = labels.training_targets(synset, p, x, teacher)
    epochs, lr = schedule(synset, p)
    net = net.to(device)
    # the reference's epochs + 1 passes, the lr x0.1 after pass epochs // 2 + 1
    recipe = Recipe(epochs + 1, lr, p.momentum, p.weight_decay, p.batch, decay_after=epochs // 2 + 1)
    fast = first_order(net, device, data.image_size)
    loss = fit(net, x, y, recipe, gen, device, data.image_size, augment, labels.loss_fn(p), relabel,
               after_pass=lambda i, loss: progress(i + 1, epochs + 1), fast=fast)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"evaluation training loss is {float(loss)}")
    return test_accuracy(fast, data, device)


def schedule(synset: SyntheticSet, p: ProtocolParams) -> tuple[int, float]:
    """Epochs and initial lr: the synthetic set's own (``full``, MTT) override the protocol's."""
    epochs = synset.epochs if synset.epochs is not None else p.epochs
    lr = synset.lr if synset.lr is not None else p.lr
    return epochs, lr


def augmenter(p: ProtocolParams, data: DataBundle):
    """The training augmentation of protocol ``p``: DSA, DC's, or None."""
    if p.dsa:
        return dsa(resolve_strategy(p.dsa_strategy, data.dsa_strategy))
    if p.dc_aug == "auto":
        raise ValueError("eval.dc_aug='auto' must be resolved at planning (specialise)")
    if p.dc_aug not in _NO_DC_AUG:
        return lambda xb, gen, strategy=p.dc_aug: dc_augment(xb, strategy, gen)
    return None


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


def choose(named: dict[str, type], choice: str, paper_protocol: str | None):
    """The registered protocol (``ProtocolSpec`` class) a method is evaluated under for
    ``eval.protocol=choice``; ``named``: the registered ones by name."""
    if choice == "method":
        choice = paper_protocol or "uniform"
    if choice not in named:
        raise choices_error("eval.protocol", choice, ("method", *named))
    return named[choice]


def specialise(params: ProtocolParams, chosen, explicit: set[str], dataset: str, model: str,
               model_params: dict) -> ProtocolParams:
    """``params`` with ``chosen``'s values and its dataset/model rules applied, except where
    a preset or ``--set`` gave the value (``explicit``); ``dc_aug=auto`` resolved."""
    values = {k: v for k, v in chosen.values.items() if k not in explicit}
    out = chosen.adjust(dataclasses.replace(params, **values), explicit, dataset, model, model_params)
    if out.dc_aug == "auto":
        out = dataclasses.replace(out, dc_aug=dc_strategy(dataset, model, model_params.get("norm")))
    return out
