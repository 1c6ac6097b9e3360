"""From decoded uint8 splits to the normalised float DataBundle every distiller sees.

Normalisation runs after the cache (which keeps uint8), so one cached decode serves any
statistics. Datasets without reference statistics compute exact ones from their train
split with :func:`channel_stats`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddbench.data.bundle import DataBundle
from ddbench.data.cache import RawSplits

#: DSA strategy without ``flip``: mirroring a digit can change its class (the reference's choice)
NO_FLIP = "color_crop_cutout_scale_rotate"
WITH_FLIP = "color_crop_cutout_flip_scale_rotate"


def channel_stats(x: torch.Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of ``x / scale``, ``x`` uint8 N,C,H,W.

    Computed from each channel's histogram of pixel values, so no float rounding.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"channel_stats expects uint8 images, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError("cannot compute statistics of an empty split")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = float(hist.sum())
        mean = float((hist * values).sum()) / n
        var = max(float((hist * (values - mean) ** 2).sum()) / n, 0.0)
        means.append(mean / scale)
        stds.append(var**0.5 / scale)
    return tuple(means), tuple(stds)


def to_bundle(
    name: str,
    raw: RawSplits,
    mean: Sequence[float],
    std: Sequence[float],
    dsa_strategy: str = WITH_FLIP,
    scale: float = 255.0,
) -> DataBundle:
    """Normalise decoded splits: float32 ``(x / scale - mean) / std`` per channel."""
    mean = tuple(float(m) for m in mean)
    # a constant channel has std 0: leave it unscaled rather than dividing by zero
    std = tuple(float(s) if s > 0 else 1.0 for s in std)
    if len(mean) != raw.x_train.shape[1] or len(std) != len(mean):
        raise ValueError(f"{len(mean)} channel statistics for {raw.x_train.shape[1]}-channel images")
    # (x / scale - mean) / std as one multiply-add (division is several times slower)
    a = torch.tensor([1.0 / (scale * sd) for sd in std], dtype=torch.float32).view(1, -1, 1, 1)
    b = torch.tensor([-mu / sd for mu, sd in zip(mean, std, strict=True)], dtype=torch.float32)
    b = b.view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(a).add_(b)

    return DataBundle(
        name=name,
        x_train=norm(raw.x_train),
        y_train=raw.y_train.to(torch.int64),
        x_test=norm(raw.x_test),
        y_test=raw.y_test.to(torch.int64),
        classes=list(raw.classes),
        mean=mean,
        std=std,
        dsa_strategy=dsa_strategy,
    )
