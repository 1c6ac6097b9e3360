"""Data conditions: a named transformation of a dataset applied before distillation, part
of every key and every stored row (``--conditions clean,zca``).

- ``clean``: the dataset as loaded.
- ``zca``: ZCA whitening as in MTT (``K.enhance.ZCAWhitening(eps=0.1)`` fit on the train
  split, the same transform applied to the test split). As in the reference it acts on
  [0, 1] pixels (the bundle's normalisation is undone first); the covariance is the unbiased
  one and eps = 0.1 is added to its eigenvalues. Images shown to people (PNG grids) go
  through the exact inverse. The fitted transform is cached under the data root, keyed by
  the content of the training images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ddbench.data.bundle import DataBundle
from ddbench.data.cache import cache_dir, temp_name
from ddbench.errors import DDBenchError

CLEAN = "clean"
CONDITIONS = ("clean", "zca")
ZCA_EPS = 0.1


def parse_conditions(names: list[str]) -> list[str]:
    for name in names:
        if name not in CONDITIONS:
            raise DDBenchError(f"unknown condition {name!r}; valid choices: {', '.join(CONDITIONS)}")
    return names


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


def apply(data: DataBundle, condition: str, root: Path) -> DataBundle:
    """``data`` under ``condition`` (a new bundle; ``data`` is not modified)."""
    if condition == CLEAN:
        return data
    if condition == "zca":
        return _zca_bundle(data, root)
    raise DDBenchError(f"unknown condition {condition!r}; valid choices: {', '.join(CONDITIONS)}")


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
