"""Data conditions: a named, seeded transformation of a dataset applied before distillation,
part of every key and every stored row (``--conditions clean,zca,noise:0.2,imbalance:10``).

- ``clean``: the dataset as loaded.
- ``zca``: ZCA whitening as in MTT (``K.enhance.ZCAWhitening(eps=0.1)`` fit on the train
  split, the same transform applied to the test split). As in the reference it acts on
  [0, 1] pixels (the bundle's normalisation is undone first); the covariance is the unbiased
  one and eps = 0.1 is added to its eigenvalues. Images shown to people (PNG grids) go
  through the exact inverse. The fitted transform is cached under the data root, keyed by
  the content of the training images.
- ``noise:RATE``: symmetric label noise: each training label, with probability RATE, is
  replaced by a class drawn uniformly from the *other* classes (so RATE is the expected
  fraction of wrong labels).
- ``noise-asym:RATE``: asymmetric (class-flip) noise: label c becomes (c + 1) mod C with
  probability RATE, the pair-flip noise of the label-noise literature.
- ``imbalance:RATIO``: long-tailed training split with an exponential profile: class c
  keeps round(n_max * RATIO^(-c / (C - 1))) images, n_max being the smallest clean class
  (so every class can provide its quota), which makes the largest/smallest ratio RATIO.
  The kept images are a seeded random subset of each class, in their original order.

Label noise and imbalance touch the *training* split only (the test split stays the same
tensors) and are seeded by the run's seed and a fixed salt per condition: the same seed
gives the same noisy labels or subset for every method (a paired design), another seed
another draw. Under ``imbalance`` an IPC above a class's size is capped for that class
(``DistillContext.class_ipcs``) instead of being an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ddbench.data.bundle import DataBundle
from ddbench.data.cache import cache_dir
from ddbench.errors import DDBenchError
from ddbench.storage.atomic import temp_name

CLEAN = "clean"
#: every condition as the user writes it (for messages and ``--help``)
CONDITIONS = ("clean", "zca", "noise:RATE", "noise-asym:RATE", "imbalance:RATIO")
ZCA_EPS = 0.1
#: generator salt of each seeded condition (its stream is seeded by the run's seed and this)
SALTS = {"noise": 11_011, "noise-asym": 12_012, "imbalance": 13_013}
#: the rules of each condition's value: kind -> (name, check, description)
VALUES = {
    "noise": ("RATE", lambda v: 0 <= v < 1, "0 <= RATE < 1"),
    "noise-asym": ("RATE", lambda v: 0 <= v < 1, "0 <= RATE < 1"),
    "imbalance": ("RATIO", lambda v: 1 <= v < math.inf, "RATIO >= 1"),
}
VALID = ("valid choices: clean, zca, noise:RATE (0 <= RATE < 1), noise-asym:RATE (0 <= RATE < 1), "
         "imbalance:RATIO (RATIO >= 1)")


@dataclass(frozen=True)
class Condition:
    """A parsed condition: ``kind`` and its value (None for ``clean`` and ``zca``)."""

    kind: str
    value: float | None = None

    @property
    def text(self) -> str:
        """The canonical spelling, as in keys and tables: ``noise:0.2``, ``imbalance:10``."""
        if self.value is None:
            return self.kind
        v = repr(float(self.value))
        return f"{self.kind}:{v[:-2] if v.endswith('.0') else v}"

    @property
    def seeded(self) -> bool:
        """Whether the transformed data depends on the run's seed (one bundle per seed)."""
        return self.kind in SALTS


def parse(text: str) -> Condition:
    """``"noise:0.2"`` -> Condition("noise", 0.2); bad input is a one-line DDBenchError."""
    kind, sep, arg = text.strip().partition(":")
    if kind in (CLEAN, "zca"):
        if sep:
            raise DDBenchError(f"condition {kind!r} takes no value; got {text!r}; {VALID}")
        return Condition(kind)
    if kind not in VALUES:
        raise DDBenchError(f"unknown condition {text!r}; {VALID}")
    name, ok, rule = VALUES[kind]
    if not sep:
        raise DDBenchError(f"condition {kind!r} needs a value: {kind}:{name}; {VALID}")
    try:
        value = float(arg)
    except ValueError:
        raise DDBenchError(f"invalid condition {text!r}: {name} {arg!r} is not a number; {VALID}") from None
    if not ok(value):
        raise DDBenchError(f"invalid condition {text!r}: {name} must satisfy {rule}; {VALID}")
    return Condition(kind, value)


def parse_conditions(names: list[str]) -> list[str]:
    """Canonical condition strings (``noise:0.20`` -> ``noise:0.2``), duplicates dropped."""
    return list(dict.fromkeys(parse(n).text for n in names))


def dataset_label(dataset: str, condition: str) -> str:
    """The dataset as tables show it: ``cifar10``, or ``cifar10 [zca]`` under a condition."""
    return dataset if condition == CLEAN else f"{dataset} [{condition}]"


def is_seeded(condition: str) -> bool:
    return parse(condition).seeded


def caps_ipc(condition: str) -> bool:
    """Whether an IPC above a class's size is capped for that class instead of an error:
    only under ``imbalance``, where small classes are the point of the condition."""
    return parse(condition).kind == "imbalance"


@dataclass
class ZCA:
    """``x -> (x - mean) @ T`` on flattened [0, 1] pixels; ``inverse`` undoes it exactly."""

    mean: torch.Tensor  # (D,)
    transform: torch.Tensor  # (D, D), symmetric
    inverse_transform: torch.Tensor  # (D, D)

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float = ZCA_EPS) -> ZCA:
        flat = x.reshape(len(x), -1).to(torch.float64)
        mean = flat.mean(0)
        centred = flat - mean
        cov = centred.T @ centred / (len(flat) - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(0) + eps
        t = (eigvecs * eigvals.rsqrt()) @ eigvecs.T
        inv = (eigvecs * eigvals.sqrt()) @ eigvecs.T
        return cls(mean.float(), t.float(), inv.float())

    def __call__(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        out = torch.empty_like(x, dtype=torch.float32)
        flat_out = out.view(len(x), -1)
        for s in range(0, len(x), chunk):
            flat_out[s : s + chunk] = (x[s : s + chunk].reshape(-1, self.mean.numel()).float() - self.mean) @ self.transform
        return out

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1).float() @ self.inverse_transform + self.mean
        return flat.view_as(x)


def apply(data: DataBundle, condition: str, root: Path, seed: int = 0) -> DataBundle:
    """``data`` under ``condition`` (a new bundle; ``data`` is not modified). ``seed`` is the
    run's seed; only seeded conditions (noise, imbalance) use it."""
    cond = parse(condition)
    if cond.kind == CLEAN:
        return data
    if cond.kind == "zca":
        return _zca_bundle(data, root)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + SALTS[cond.kind]) % (2**63))
    if cond.kind == "imbalance":
        return _imbalanced(data, cond.value, gen)
    noisy = (symmetric_noise if cond.kind == "noise" else asymmetric_noise)(
        data.y_train, data.num_classes, cond.value, gen)
    return dataclasses.replace(data, y_train=noisy, _by_class=None, _fingerprint=None)


def symmetric_noise(y: torch.Tensor, num_classes: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Each label, with probability ``rate``, becomes a uniformly drawn *different* class."""
    flip = torch.rand(len(y), generator=gen) < rate
    shift = torch.randint(1, max(num_classes, 2), (len(y),), generator=gen)
    return torch.where(flip, (y + shift) % num_classes, y)


def asymmetric_noise(y: torch.Tensor, num_classes: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Each label c, with probability ``rate``, becomes (c + 1) mod C (class flip)."""
    flip = torch.rand(len(y), generator=gen) < rate
    return torch.where(flip, (y + 1) % num_classes, y)


def imbalance_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Images kept per class: round(n_max * ratio^(-c / (C - 1))), class 0 the largest."""
    if num_classes < 2:
        return [n_max] * num_classes
    return [round(n_max * ratio ** (-c / (num_classes - 1))) for c in range(num_classes)]


def _imbalanced(data: DataBundle, ratio: float, gen: torch.Generator) -> DataBundle:
    n_max = min(data.class_counts())
    counts = imbalance_counts(n_max, data.num_classes, ratio)
    if min(counts) < 1:
        raise DDBenchError(
            f"condition imbalance:{ratio:g} leaves class {data.classes[-1]!r} of {data.name} without "
            f"training images ({n_max} per class at most); valid: RATIO <= {2 * n_max - 1}")
    keep = [data.class_indices(c)[torch.randperm(len(data.class_indices(c)), generator=gen)[:n]]
            for c, n in enumerate(counts)]
    idx = torch.cat(keep).sort().values
    return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx], _by_class=None,
                               _fingerprint=None)


def _pixels(data: DataBundle, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)
    return x * std + mean


def _zca_bundle(data: DataBundle, root: Path) -> DataBundle:
    train = _pixels(data, data.x_train)
    zca = _cached_fit(train, data, root)
    return dataclasses.replace(
        data, x_train=zca(train), x_test=zca(_pixels(data, data.x_test)), zca=zca, _by_class=None,
        _fingerprint=None,
    )


def _cached_fit(train: torch.Tensor, data: DataBundle, root: Path) -> ZCA:
    from safetensors.torch import load_file, save_file

    h = hashlib.sha256(f"{data.fingerprint()} {data.mean} {data.std} eps={ZCA_EPS}".encode())
    path = cache_dir(root) / f"zca-{h.hexdigest()[:20]}.safetensors"
    try:
        t = load_file(str(path))
        return ZCA(t["mean"], t["transform"], t["inverse_transform"])
    except Exception:  # absent or unreadable: fit again
        pass
    zca = ZCA.fit(train)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(path)
        save_file(dataclasses.asdict(zca), str(tmp))
        os.replace(tmp, path)
    except OSError:  # a read-only data root: fit again next time
        pass
    return zca
