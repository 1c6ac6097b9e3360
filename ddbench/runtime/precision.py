"""Mixed precision as an explicit, keyed option (``amp=bf16`` on DM, DC and DSA), never a
default: the reference methods run in float32, and bfloat16 changes the numbers.

Under ``bf16`` the network's matmuls and convolutions run in bfloat16 through
``torch.autocast`` (on CPUs with AVX512-BF16 and on GPUs about twice the float32 rate); the
parameters, the synthetic images, their gradients and the optimizers stay float32, and the
distillers compute their losses in float32 from the autocast outputs.
"""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch

#: the type of a distiller's ``amp`` parameter
Amp = Literal["off", "bf16"]
AMP_CHOICES = get_args(Amp)


def autocast(device: torch.device, amp: str):
    """A context in which the network runs in ``amp`` precision ("off": float32, as built)."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown amp {amp!r}; choose from {', '.join(AMP_CHOICES)}")
