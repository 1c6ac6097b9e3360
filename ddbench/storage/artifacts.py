"""Synthetic sets on disk: safetensors (no pickle, nothing executable) plus a PNG grid."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torchvision.utils import save_image

from ddbench.synthetic import SyntheticSet

GRID_MAX_PER_CLASS = 10
GRID_MAX_CLASSES = 100


def save_synset(path: Path, synset: SyntheticSet, info: dict) -> None:
    """Write atomically: a crash never leaves a half-written artifact under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "info": json.dumps(info, sort_keys=True),
        "lr": json.dumps(synset.lr),
        "epochs": json.dumps(synset.epochs),
        "meta": json.dumps(synset.meta, default=str),
    }
    tensors = {"images": synset.images.detach().float().cpu().contiguous(),
               "labels": synset.labels.cpu().contiguous()}
    if synset.soft_labels is not None:
        tensors["soft_labels"] = synset.soft_labels.detach().float().cpu().contiguous()
        meta["soft_kind"] = synset.soft_kind
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def class_count(path: Path) -> int | None:
    """Distinct labels of a stored set, reading the labels only (None when it is gone)."""
    from safetensors import safe_open

    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        labels = f.get_tensor("labels")
    return int(labels.argmax(1).unique().numel() if labels.dim() == 2 else labels.unique().numel())


def load_synset(path: Path) -> SyntheticSet:
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return SyntheticSet(
        tensors["images"],
        tensors["labels"],
        lr=json.loads(meta.get("lr", "null")),
        epochs=json.loads(meta.get("epochs", "null")),
        meta=json.loads(meta.get("meta", "{}")),
        soft_labels=tensors.get("soft_labels"),
        soft_kind=meta.get("soft_kind", "probs"),
    )


def save_grid(path: Path, synset: SyntheticSet, num_classes: int, denormalize) -> None:
    """One column per class, side by side as the papers show a set (up to 10 images down
    each, so IPC 1 is one row of classes, not a strip one image wide), un-normalised to pixel
    space by ``denormalize`` (the dataset's ``DataBundle.denormalize``)."""
    rows = []
    per_row = 0
    for c in range(min(num_classes, GRID_MAX_CLASSES)):
        idx = (synset.labels == c).nonzero().flatten()[:GRID_MAX_PER_CLASS]
        rows.append(idx)
        per_row = max(per_row, len(idx))
    if per_row == 0:
        return
    image_size = tuple(synset.images.shape[2:])
    blank = torch.zeros(1, synset.images.shape[1], *image_size)
    columns = []
    for idx in rows:
        x = denormalize(synset.images[idx].detach().float().cpu())
        pad = blank.expand(per_row - len(x), -1, -1, -1)
        columns.append(torch.cat([x, pad]))
    # row-major for save_image: image i of every class, then image i + 1
    grid = torch.stack(columns, dim=1).flatten(0, 1)
    scale = max(1, 32 // max(image_size))  # 8x8 digits are shown 4x larger
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    save_image(grid, str(tmp), nrow=len(columns), padding=2, pad_value=1.0)
    os.replace(tmp, path)
