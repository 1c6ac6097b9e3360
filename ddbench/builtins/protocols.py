"""The built-in evaluation protocols: ddbench's uniform one and each paper's own, registered
through the same hook a plugin uses for its own (``register_protocols``).

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
protocol's own (e.g. the ``small`` preset's epochs); a paper's protocol so changed is stored
starred (``dsa-eval/v1*``) and never compared with the paper's numbers.
"""

from __future__ import annotations

import dataclasses

from ddbench import ProtocolSpec, hookimpl
from ddbench.evaluation.dc_augment import dc_strategy


class Uniform(ProtocolSpec):
    """ddbench's head-to-head protocol: the same for every method"""

    name, stored_name = "uniform", "ddbench-eval"
    published = False


class DC(ProtocolSpec):
    """DC's: DC augmentation by dataset/model (get_daparam), 300 epochs without it, 1000 with; 20 nets"""

    name, stored_name = "dc", "dc-eval"
    values = {"dsa": False, "dc_aug": "auto", "num_eval": 20}

    @classmethod
    def adjust(cls, params, explicit, dataset, model, model_params):
        if params.dc_aug != "auto":
            return params
        params = dataclasses.replace(params, dc_aug=dc_strategy(dataset, model, model_params.get("norm")))
        if "epochs" not in explicit:  # main.py: 1000 epochs with an augmentation, 300 without
            params = dataclasses.replace(params, epochs=300 if params.dc_aug == "none" else 1000)
        return params


class DSA(ProtocolSpec):
    """DSA's: DSA augmentation, 1000 epochs, 20 nets"""

    name, stored_name = "dsa", "dsa-eval"
    values = {"dsa": True, "epochs": 1000, "num_eval": 20}


class DM(ProtocolSpec):
    """DM's: DSA augmentation, 1000 epochs, 20 nets"""

    name, stored_name = "dm", "dm-eval"
    values = {"dsa": True, "epochs": 1000, "num_eval": 20}


class MTT(ProtocolSpec):
    """MTT's: DSA augmentation, 1000 epochs, the learned lr, 5 nets"""

    name, stored_name = "mtt", "mtt-eval"
    values = {"dsa": True, "epochs": 1000, "num_eval": 5}


@hookimpl
def register_protocols(register):
    for cls in (Uniform, DC, DSA, DM, MTT):
        register(cls)
