"""What a distiller returns: the synthetic set, with its optional learned lr and soft labels,
and the checks that reject a malformed one before it is evaluated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SyntheticSet:
    """What a distiller returns: images in the bundle's normalised space, hard labels, and
    optionally a learned learning rate and soft labels that the evaluation protocol uses.

    ``soft_labels`` (N x classes) are per-image class distributions (``soft_kind="probs"``,
    rows summing to 1) or logits (``"logits"``, tempered by the protocol's temperature);
    ``labels`` stays the hard label of each image (the argmax, or the class it was made
    for). A protocol with ``eval.labels=soft`` trains on them, ``hard`` on ``labels``."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float | None = None
    soft_labels: torch.Tensor | None = None
    soft_kind: str = "probs"
    #: passes over the set for evaluation when the set is not tiny (``full``); None = protocol's
    epochs: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, data, who: str) -> None:
        """Reject malformed output with an error naming the plugin, before it is evaluated.
        ``data``: the ``DataBundle`` it was distilled from (not imported: a synthetic set sits
        below the data layer)."""
        from ddbench.errors import DDBenchError

        def bad(msg):
            return DDBenchError(f"distiller {who!r} returned an invalid synthetic set: {msg}")

        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise bad("images and labels must be tensors")
        shape = (data.channels, *data.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise bad(f"images have shape {tuple(x.shape)}, expected (N, {', '.join(map(str, shape))})")
        if not x.is_floating_point():
            raise bad(f"images have dtype {x.dtype}, expected a floating dtype")
        if y.dtype != torch.long or y.shape != (x.shape[0],):
            raise bad(f"labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= data.num_classes):
            raise bad(f"labels outside [0, {data.num_classes})")
        if not torch.isfinite(x).all():
            raise bad("images contain NaN or inf")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise bad(f"learned lr {self.lr} is not a positive number")
        if self.soft_labels is not None:
            check_soft_labels(self.soft_labels, self.soft_kind, len(x), data.num_classes, bad)


def check_soft_labels(soft, kind: str, n: int, num_classes: int, bad) -> None:
    """Soft labels must be finite float (n, classes); probabilities non-negative rows
    summing to 1 (within 1e-3). ``bad(message)`` makes the error to raise."""
    if kind not in ("probs", "logits"):
        raise bad(f"soft_kind {kind!r}; valid choices: probs, logits")
    if not isinstance(soft, torch.Tensor) or not soft.is_floating_point():
        raise bad("soft labels must be a floating tensor")
    if tuple(soft.shape) != (n, num_classes):
        raise bad(f"soft labels have shape {tuple(soft.shape)}, expected ({n}, {num_classes})")
    if not torch.isfinite(soft).all():
        raise bad("soft labels contain NaN or inf")
    if kind == "probs" and n and (float(soft.min()) < 0 or float((soft.sum(1) - 1).abs().max()) > 1e-3):
        raise bad("soft labels given as probabilities must be non-negative rows summing to 1 (or say soft_kind=logits)")
