"""The named evaluation protocols: ddbench's uniform one and each paper's own.

A head-to-head table needs one protocol for every method (``uniform``, the default of the
``small`` preset and of any ``--set eval.protocol=uniform``). Reproducing a paper's number
needs that paper's protocol, which differs per method in the reference code
(VICO-UoE/DatasetCondensation ``main.py``/``main_DM.py`` with ``utils.get_daparam`` and
``evaluate_synset``; GeorgeCazenavette/mtt-distillation ``distill.py``):

- ``dc``: no DSA; DC's own augmentation (``ddbench.evaluation.dc_augment``) chosen by ``get_daparam``
  (crop_scale_rotate on MNIST, crop_noise when the evaluation model is the BatchNorm
  ConvNet, none otherwise); 300 epochs without augmentation, 1000 with; 20 networks.
- ``dsa`` and ``dm``: DSA augmentation, 1000 epochs, 20 networks (``num_eval`` 20).
- ``mtt``: DSA augmentation, 1000 epochs, the learned lr, 5 networks.

``--set eval.protocol=method`` (the ``paper`` preset's default) evaluates every method
under its own paper's protocol (a distiller's ``paper_protocol``; ``uniform`` when it has
none). Each protocol is stored under its own name and version, so results of different
protocols are never pooled and ``ddbench check`` compares a published number only with
results of the protocol behind it. Values set by a preset or ``--set`` win over a
protocol's own (e.g. the ``small`` preset's epochs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ddbench.errors import choices_error
from ddbench.evaluation.dc_augment import dc_strategy


@dataclass(frozen=True)
class Named:
    """One named protocol: the values it sets over ``ProtocolParams``' defaults."""

    key: str  # what --set eval.protocol takes
    name: str  # stored with every result (``name/vVERSION``)
    version: int
    values: dict[str, Any]
    summary: str


UNIFORM = Named("uniform", "ddbench-eval", 1, {}, "ddbench's head-to-head protocol: the same for every method")
NAMED: dict[str, Named] = {n.key: n for n in (
    UNIFORM,
    Named("dc", "dc-eval", 1, {"dsa": False, "dc_aug": "auto", "num_eval": 20},
          "DC's: DC augmentation by dataset/model (get_daparam), 300 epochs without it, 1000 with; 20 nets"),
    Named("dsa", "dsa-eval", 1, {"dsa": True, "epochs": 1000, "num_eval": 20},
          "DSA's: DSA augmentation, 1000 epochs, 20 nets"),
    Named("dm", "dm-eval", 1, {"dsa": True, "epochs": 1000, "num_eval": 20},
          "DM's: DSA augmentation, 1000 epochs, 20 nets"),
    Named("mtt", "mtt-eval", 1, {"dsa": True, "epochs": 1000, "num_eval": 5},
          "MTT's: DSA augmentation, 1000 epochs, the learned lr, 5 nets"),
)}
#: ``eval.protocol`` values: a named protocol, or each method's own
CHOICES = ("method", *NAMED)


def named(key: str) -> Named:
    if key not in NAMED:
        raise choices_error("evaluation protocol", key, CHOICES)
    return NAMED[key]


def for_method(choice: str, paper_protocol: str | None) -> Named:
    """The protocol a method is evaluated under for ``eval.protocol=choice``."""
    if choice == "method":
        return named(paper_protocol) if paper_protocol else UNIFORM
    return named(choice)


def specialise(params, chosen: Named, explicit: set[str], dataset: str, model: str, model_params: dict):
    """``params`` with ``chosen``'s values and its dataset/model rules applied, except where
    a preset or ``--set`` gave the value (``explicit``)."""
    values = {k: v for k, v in chosen.values.items() if k not in explicit}
    out = dataclasses.replace(params, **values)
    if out.dc_aug == "auto":
        out = dataclasses.replace(out, dc_aug=dc_strategy(dataset, model, model_params.get("norm")))
        if chosen.key == "dc" and "epochs" not in explicit:  # main.py: 1000 epochs with an augmentation
            out = dataclasses.replace(out, epochs=300 if out.dc_aug == "none" else 1000)
    return out
