"""Distilled sets released as files by other authors, brought into a ``SyntheticSet``.

Published sets (MTT, DATM, the reference DC/DSA/DM code, image folders, ...) come in many
layouts and spaces; evaluating them under ddbench's protocol needs them in the bundle's space
with checked labels. ``read_external`` reads what the file holds (``.pt`` files through
``ddbench.data.pickled``: nothing is unpickled beyond tensors, numpy numbers and containers);
``fit_to_dataset`` checks it against a dataset and converts it.

The images' space (pixel, normalised, ZCA-whitened) is decided and converted by the rules of
``ddbench.data.spaces``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddbench.data.bundle import DataBundle
from ddbench.data.pickled import read_pt, torch_load, unreadable
from ddbench.data.spaces import SPACES, to_space
from ddbench.errors import DDBenchError
from ddbench.synthetic import SyntheticSet, check_soft_labels

IMAGE_KEYS = ("images", "x", "image", "data")
LABEL_KEYS = ("labels", "y", "label", "targets")
SOFT_KEYS = ("soft_labels",)
LR_KEYS = ("lr", "syn_lr")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FORMATS = (".safetensors, .pt/.pth (also the reference code's res_*.pt), .npz, a folder with images*.pt "
           "and labels*.pt (MTT/DATM), or a folder of class folders of .png/.jpg images")
#: hard labels: integer dtypes
INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class ExternalSet:
    """What a file holds, before it is fitted to a dataset (images as stored, float32)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    soft: torch.Tensor | None
    soft_kind: str | None
    lr: float | None
    pixel_hint: bool
    format: str
    #: image folders: the class folder name of each label index (mapped to classes by fit)
    class_names: list[str] | None = None
    path: Path | None = None
    #: the space the file gives itself, and what gives it (metadata, layout, file name)
    declared_space: str | None = None
    declared_by: str | None = None
    #: why the set is for ZCA-whitened evaluation (metadata, file name): it needs the zca condition
    zca_run: str | None = None


# --------------------------------------------------------------------------- reading


def read_external(path: Path) -> ExternalSet:
    """Read a released set from a file or folder of any format in ``FORMATS``."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("images*.pt")):
            entries, images_file = _read_pt_folder(path)
            ext = _from_entries(entries, path, "pt-folder")
            if images_file.startswith("images_zca_"):
                ext.declared_space, ext.declared_by = "pixel", f"MTT's ZCA inverse, {images_file}"
                ext.zca_run = f"{images_file} is MTT's ZCA inverse of a set distilled for whitened data"
            return ext
        return _read_image_folder(path)
    fmt = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".npz": "npz"}.get(path.suffix.lower())
    if path.is_file() and fmt == "pt":
        entries, layout = read_pt(path)
        ext = _from_entries(entries, path, "pt")
        if layout is not None:
            ext.declared_space, ext.declared_by = "normalized", layout
        return ext
    if path.is_file() and fmt:
        ext = _from_entries((_load_safetensors if fmt == "safetensors" else _load_npz)(path), path, fmt)
        if fmt == "safetensors":
            _read_metadata(path, ext)
        return ext
    what = "unknown file type" if path.exists() else "no such file or folder"
    raise DDBenchError(f"{path}: {what}; accepted: {FORMATS}")


def _refused(path: Path) -> DDBenchError:
    return DDBenchError(f"{path}: refused: the file needs unpickling of arbitrary objects (numpy object "
                        "arrays); re-save it with plain arrays, or as .safetensors")


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise unreadable(path, exc) from None


def _read_metadata(path: Path, ext: ExternalSet) -> None:
    """The metadata's ``space`` and ``conditions``: a file that says what it holds needs no guessing."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    space = meta.get("space")
    if space is not None and space not in SPACES[1:]:
        raise DDBenchError(f"{path}: metadata space {space!r}; valid: {', '.join(SPACES[1:])}")
    by = "declared in the file"
    if "zca" in re.split(r"[\s,]+", meta.get("conditions", "")):
        # a set of a zca run is in that run's space, whitened, unless it says pixel
        space, by = ("pixel" if space == "pixel" else "zca"), "declared in the file: conditions zca"
        ext.zca_run = "its metadata names the zca condition"
    elif space == "zca":
        ext.zca_run = "its metadata says space zca"
    if space is not None:
        ext.declared_space, ext.declared_by = space, by


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # object arrays need pickle; otherwise not a zip, truncated, ...
        raise (_refused(path) if "allow_pickle" in str(exc) else unreadable(path, exc)) from None


def _read_pt_folder(path: Path) -> tuple[dict, str]:
    """MTT/DATM's release layout: images*.pt, labels*.pt and optional lr*.pt, one tensor each;
    also returns the images file's name (MTT's images_zca_* says what the images are)."""
    entries, names = {}, {}
    for key, pattern in (("images", "images*.pt"), ("labels", "labels*.pt"), ("lr", "lr*.pt")):
        found = sorted(path.glob(pattern))
        if len(found) > 1:
            raise DDBenchError(f"{path}: several files match {pattern}: {', '.join(p.name for p in found)}; keep one")
        if found:
            entries[key], names[key] = torch_load(found[0]), found[0].name
        elif key != "lr":
            raise DDBenchError(f"{path}: no {pattern} next to the images (expected images*.pt and labels*.pt)")
    return entries, names["images"]


def _read_image_folder(path: Path) -> ExternalSet:
    """``<class>/*.png|jpg``: pixels in [0, 1], 1 channel for grayscale files, else 3 (mixed
    folders are brought to 3); labels index ``class_names`` until fit knows the classes."""
    pics, labels, names = [], [], []
    for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
                       and not f.name.startswith(".") and f.is_file())
        if files:
            pics += [_read_image(f) for f in files]
            labels += [len(names)] * len(files)
            names.append(d.name)
    if not pics:
        raise DDBenchError(f"{path}: empty folder: no images*.pt and labels*.pt, and no class "
                           f"folders with .png/.jpg images; accepted: {FORMATS}")
    sizes = sorted({tuple(p.shape[1:]) for p in pics})
    if len(sizes) > 1:
        raise DDBenchError(f"{path}: images of different sizes {', '.join(map(str, sizes))}; all must be the same")
    channels = max(p.shape[0] for p in pics)
    images = torch.stack([p.expand(channels, -1, -1) for p in pics])
    return ExternalSet(images, torch.tensor(labels, dtype=torch.int64), None, None, None, True,
                       "folder", class_names=names, path=path)


def _read_image(f: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            arr = np.asarray(im.convert("L" if im.mode in ("1", "L", "LA") else "RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise unreadable(f, exc) from None
    t = torch.from_numpy(arr.copy()).float() / 255
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def _pick(entries: dict, keys: tuple[str, ...], path: Path):
    found = [k for k in keys if k in entries]
    if len(found) > 1:
        raise DDBenchError(f"{path}: ambiguous entries {', '.join(found)}; keep one")
    return entries[found[0]] if found else None


def _tensor(value, name: str, path: Path) -> torch.Tensor:
    """A dense CPU tensor of ``value`` (a tensor, numpy array or numpy scalar), or a one-line error."""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if not value.dtype.isnative:  # a big-endian file: torch reads native byte order only
            value = value.astype(value.dtype.newbyteorder("="))
        try:
            value = torch.from_numpy(np.ascontiguousarray(value))
        except TypeError:
            raise DDBenchError(f"{path}: {name} has dtype {value.dtype}; expected numbers") from None
    if not isinstance(value, torch.Tensor):
        raise DDBenchError(f"{path}: {name} is a {type(value).__name__}; expected a tensor or array")
    if value.layout != torch.strided:
        raise DDBenchError(f"{path}: {name} is a {value.layout} tensor; expected a dense one (save it with .to_dense())")
    odd = "a meta tensor (no values)" if value.is_meta else "quantized" if value.is_quantized else \
        "a nested tensor" if value.is_nested else None
    if odd:
        raise DDBenchError(f"{path}: {name} is {odd}; expected a dense tensor of numbers")
    return value.detach()


def _from_entries(entries: dict, path: Path, fmt: str) -> ExternalSet:
    """Named entries (or aliases) -> ExternalSet: the label rules, uint8 images as pixels."""
    raw = _pick(entries, IMAGE_KEYS, path)
    if raw is None:
        raise DDBenchError(f"{path}: no images (expected an entry named {', '.join(IMAGE_KEYS)}; "
                           f"found {', '.join(map(str, entries)) or 'none'})")
    images = _tensor(raw, "images", path)
    pixel_hint = images.dtype == torch.uint8
    if pixel_hint:
        images = images.float() / 255
    elif images.is_floating_point():
        images = images.float()
    else:
        raise DDBenchError(f"{path}: images have dtype {images.dtype}; expected float or uint8")

    labels = soft = None
    raw_labels = _pick(entries, LABEL_KEYS, path)
    if raw_labels is not None:
        labels = _tensor(raw_labels, "labels", path)
        if labels.dim() == 2 and labels.is_floating_point():
            labels, soft = None, labels
        elif labels.dim() != 1 or labels.dtype not in INTEGERS:
            raise DDBenchError(f"{path}: labels have dtype {labels.dtype} and shape {tuple(labels.shape)}; "
                               "expected 1-D integers or 2-D float (N, classes) soft labels")
        else:
            labels = labels.long()
            if len(labels) and int(labels.min()) < 0:
                raise DDBenchError(f"{path}: labels range {int(labels.min())}..{int(labels.max())}; "
                                   "class indices start at 0")
    raw_soft = _pick(entries, SOFT_KEYS, path)
    if raw_soft is not None:
        if soft is not None:
            raise DDBenchError(f"{path}: soft labels given twice (2-D labels and soft_labels); keep one")
        soft = _tensor(raw_soft, "soft_labels", path)
        if soft.dim() != 2 or not soft.is_floating_point():
            raise DDBenchError(f"{path}: soft_labels have dtype {soft.dtype} and shape {tuple(soft.shape)}; "
                               "expected 2-D float (N, classes)")
    if labels is None and soft is None:
        raise DDBenchError(f"{path}: no labels (expected an entry named {', '.join(LABEL_KEYS + SOFT_KEYS)})")
    soft = None if soft is None else soft.float()
    lr = _pick(entries, LR_KEYS, path)
    if lr is not None:
        lr = _tensor(torch.tensor(float(lr)) if type(lr) in (int, float) else lr, "lr", path)
        if lr.numel() != 1 or lr.dtype == torch.bool or lr.is_complex():
            raise DDBenchError(f"{path}: lr has dtype {lr.dtype} and shape {tuple(lr.shape)}; expected one number")
        lr = float(lr.reshape(()))
    kind = None if soft is None else _soft_kind(soft)
    return ExternalSet(images, labels, soft, kind, lr, pixel_hint, fmt, path=path)


def _soft_kind(soft: torch.Tensor) -> str:
    """Probabilities when every row is a distribution (within 1e-3), else logits."""
    probs = soft.numel() and bool((soft >= 0).all()) and float((soft.sum(1) - 1).abs().max()) <= 1e-3
    return "probs" if probs else "logits"


# --------------------------------------------------------------------------- fitting


def fit_to_dataset(ext: ExternalSet, data: DataBundle, space: str, who: str) -> tuple[SyntheticSet, str]:
    """Check ``ext`` against ``data`` and bring its images into the bundle's normalised space.

    Everything is checked before the space conversion, so a bad file fails with one line naming
    ``who`` and the file. Returns the set and the space used, with the reason for it."""
    src = ext.path if ext.path is not None else "(in memory)"

    def bad(msg: str) -> DDBenchError:
        return DDBenchError(f"{who}: {src}: {msg}")

    if space not in SPACES:
        raise bad(f"space {space!r}; valid choices: {', '.join(SPACES)}")
    c, (h, w) = data.channels, data.image_size
    x = ext.images if ext.format == "folder" else _layout(ext.images, c)
    if x.dim() != 4:
        raise bad(f"images have shape {tuple(x.shape)}; expected (N, {c}, {h}, {w})")
    if len(x) == 0:
        raise bad("the file holds no images")
    if ext.format == "folder":
        x = _convert_channels(x, c)
    if x.shape[1] != c:
        raise bad(f"images have {x.shape[1]} channels, the dataset has {c} (shape {tuple(x.shape)}); "
                  "only image folders are converted")
    if tuple(x.shape[2:]) != (h, w):
        raise bad(f"images are {x.shape[2]}x{x.shape[3]}, the dataset's are {h}x{w} (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise bad("images contain NaN or inf")
    n = len(x)
    if ext.soft is not None:
        check_soft_labels(ext.soft, ext.soft_kind, n, data.num_classes, bad)
    labels = ext.labels if ext.labels is not None else ext.soft.argmax(1)
    if ext.class_names is not None:
        labels = _folder_classes(ext.class_names, data, bad)[labels]
    if labels.shape != (n,):
        raise bad(f"{labels.numel()} labels for {n} images")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= data.num_classes:
        raise bad(f"labels range {lo}..{hi}, outside [0, {data.num_classes})")
    if ext.lr is not None and not (math.isfinite(ext.lr) and ext.lr > 0):
        raise bad(f"lr {ext.lr} is not a positive number")
    x, used = to_space(x, ext, data, space, bad)
    # copies: callers cache the ExternalSet, and a set's tensors may be changed in place
    soft = None if ext.soft is None else ext.soft.clone()
    syn = SyntheticSet(x.float().contiguous(), labels.clone(), lr=ext.lr, soft_labels=soft,
                       soft_kind=ext.soft_kind or "probs", meta={"format": ext.format, "space": used})
    syn.validate(data, who)
    return syn, used


def _layout(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, H, W) for 1-channel data and channels-last (N, H, W, C) -> (N, C, H, W)."""
    if x.dim() == 3 and channels == 1:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[-1] == channels and x.shape[1] != channels:
        return x.permute(0, 3, 1, 2)
    return x


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Image-folder pixels to the dataset's channels: gray repeated, RGB to ITU-R 601 luma (as PIL)."""
    if x.shape[1] == 3 and channels == 1:
        return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x


def _folder_classes(names: list[str], data: DataBundle, bad) -> torch.Tensor:
    """Class index of each folder name: the dataset's class names (any case), else integers."""
    by_name = {cls.lower(): i for i, cls in enumerate(data.classes)}
    if all(n.lower() in by_name for n in names):
        return torch.tensor([by_name[n.lower()] for n in names])
    if all(n.isdigit() and int(n) < data.num_classes for n in names):
        return torch.tensor([int(n) for n in names])
    unknown = [n for n in names if n.lower() not in by_name]
    raise bad(f"class folders {', '.join(unknown)} are not classes of the dataset; expected folder "
              f"names among {', '.join(data.classes)} or integers 0..{data.num_classes - 1}")
