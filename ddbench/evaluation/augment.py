"""Differentiable Siamese augmentation (DSA), vectorised over Siamese groups.

A port of ``ParamDiffAug`` / ``DiffAugment`` (``aug_mode='S'``) from the DC/DSA/DM reference
(VICO-UoE/DatasetCondensation ``utils.py``; the MTT copy is the same and is the one followed
for ``align_corners=True`` in scale/rotate).  One op group is drawn from the strategy string
(``color`` = brightness, saturation, contrast in that order; ``crop``; ``cutout``; ``flip``;
``scale``; ``rotate``) and applied with the reference formulas.

The reference makes an augmentation "Siamese" by giving the same seed to the real batch and
the synthetic batch of one class, which then both use the parameters drawn for sample 0.  Here
the same thing is done for all classes at once: every sample carries a *group id*, parameters
(and the op choice) are drawn once per group and indexed by the group id, so

* all samples of one group get the identical transform, whatever the group's size;
* different groups get independent draws, including an independent op choice, which is the
  vectorised equivalent of calling the reference once per class with a different seed;
* ``groups=None`` is the reference's ``seed=-1``: one op for the whole call, independent
  parameters per sample (used when training networks).

Randomness comes only from ``generator`` when one is given (drawn on the generator's device,
normally the CPU, then moved to ``x.device``); with ``generator=None`` the global RNG is used.
The draws depend on the generator state, the strategy, the number of groups and the image
size only, never on the group sizes: two calls with the same generator state, the same
``num_groups`` and the same image size give a group the same transform.  Everything is
differentiable with respect to ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from ddbench.errors import DDBenchError, choices_error
from ddbench.params import Check

__all__ = [
    "DEFAULT_STRATEGY",
    "DSA_OPS",
    "DSAParams",
    "Strategy",
    "diff_augment",
    "parse_strategy",
    "siamese_groups",
]

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """The reference ``ParamDiffAug`` values (``ratio_noise`` is unused there and omitted)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5  # the cut square is 0.5 x 0.5 of the image
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


def resolve_strategy(name: str, dataset_default: str) -> str:
    """``"auto"`` means the dataset's default strategy (no flip for digit datasets)."""
    return dataset_default if name == "auto" else name


def parse_strategy(strategy: str | None) -> list[str]:
    """The op groups of a strategy string; ``''``, ``None`` and ``'none'`` give ``[]``."""
    if not strategy or strategy.lower() == "none":
        return []
    ops = strategy.split("_")
    for op in ops:
        if op not in DSA_OPS:
            raise choices_error("DSA op", op, DSA_OPS)
    return ops


def valid_strategy(strategy: str) -> bool:
    """Whether a ``dsa_strategy`` parameter is usable: ``"auto"`` or a strategy string."""
    if strategy == "auto":
        return True
    try:
        parse_strategy(strategy)
    except DDBenchError:
        return False
    return True


#: the type of a ``dsa_strategy`` parameter, checked at planning ("auto" = the dataset's default)
Strategy = Annotated[
    str, Check(valid_strategy, "auto, none or ops joined by '_' from " + ", ".join(DSA_OPS))
]


def siamese_groups(counts: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Group ids ``[0]*counts[0] + [1]*counts[1] + ...`` as an int64 tensor."""
    counts_t = torch.as_tensor(list(counts), dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(counts_t)), counts_t).to(device)


# ---------------------------------------------------------------------------------------------
# Parameter draws


def _draw(
    ops: list[str],
    n: int,
    shared_op: bool,
    size: tuple[int, int],
    p: DSAParams,
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """All random numbers for ``n`` parameter slots, in a fixed order.

    Every parameter of every op is drawn whatever op ends up chosen, so the values a slot
    gets depend only on the generator state, ``n``, the strategy and the image size.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    kw = {"generator": generator, "device": dev}
    H, W = size
    d: dict[str, Tensor] = {}
    d["op"] = torch.randint(0, len(ops), (1 if shared_op else n,), **kw)
    r = p.ratio_scale
    d["sx"] = torch.rand(n, **kw) * (r - 1.0 / r) + 1.0 / r
    d["sy"] = torch.rand(n, **kw) * (r - 1.0 / r) + 1.0 / r
    d["rot"] = (torch.rand(n, **kw) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    d["flip"] = torch.rand(n, **kw)
    d["bright"] = torch.rand(n, **kw)
    d["sat"] = torch.rand(n, **kw)
    d["contrast"] = torch.rand(n, **kw)
    shift_h, shift_w = int(H * p.ratio_crop_pad + 0.5), int(W * p.ratio_crop_pad + 0.5)
    d["tx"] = torch.randint(-shift_h, shift_h + 1, (n,), **kw)
    d["ty"] = torch.randint(-shift_w, shift_w + 1, (n,), **kw)
    cut_h, cut_w = int(H * p.ratio_cutout + 0.5), int(W * p.ratio_cutout + 0.5)
    d["ox"] = torch.randint(0, H + (1 - cut_h % 2), (n,), **kw)
    d["oy"] = torch.randint(0, W + (1 - cut_w % 2), (n,), **kw)
    return d


# ---------------------------------------------------------------------------------------------
# The ops: ``x`` is (M, C, H, W), every parameter tensor has shape (M,) on ``x.device``.


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
    z = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
    return _affine(x, theta.to(x.dtype))


def _rotate(x: Tensor, t: Tensor) -> Tensor:
    c, s, z = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    theta = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1)
    return _affine(x, theta.to(x.dtype))


def _flip(x: Tensor, u: Tensor, prob: float) -> Tensor:
    return torch.where((u < prob).view(-1, 1, 1, 1), x.flip(3), x)


def _color(x: Tensor, ub: Tensor, us: Tensor, uc: Tensor, p: DSAParams) -> Tensor:
    ub, us, uc = (u.to(x.dtype).view(-1, 1, 1, 1) for u in (ub, us, uc))
    x = x + (ub - 0.5) * p.brightness
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (us * p.saturation) + m
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - m) * (uc + p.contrast) + m


def _crop(x: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Translate by (tx, ty) pixels with zero fill: the reference's pad-by-1-and-clamp gather."""
    M, C, H, W = x.shape
    rows = (torch.arange(H, device=x.device) + tx.view(-1, 1) + 1).clamp(0, H + 1)  # (M, H)
    cols = (torch.arange(W, device=x.device) + ty.view(-1, 1) + 1).clamp(0, W + 1)  # (M, W)
    x_pad = F.pad(x, [1, 1, 1, 1])  # (M, C, H + 2, W + 2)
    # one gather on the flattened padded image (the same pixels as the reference's indexing)
    flat = (rows.unsqueeze(2) * (W + 2) + cols.unsqueeze(1)).view(M, 1, H * W)
    return x_pad.flatten(2).gather(2, flat.expand(M, C, H * W)).view(M, C, H, W)


def _cutout_mask(
    M: int, H: int, W: int, ox: Tensor, oy: Tensor, ratio: float, dtype, device
) -> Tensor:
    """(M, H, W) mask, 0 on the (clipped) cut square.

    The reference zeroes the clamped indices ``clamp(arange(size) + offset - size//2)``; the
    offsets it draws always leave that square overlapping the image, so clamping equals
    clipping the interval ``[offset - size//2, offset - size//2 + size - 1]``.
    """
    cut_h, cut_w = int(H * ratio + 0.5), int(W * ratio + 0.5)
    r0 = (ox - cut_h // 2).view(-1, 1)
    c0 = (oy - cut_w // 2).view(-1, 1)
    r = torch.arange(H, device=device)
    c = torch.arange(W, device=device)
    in_r = (r >= r0) & (r < r0 + cut_h)  # (M, H)
    in_c = (c >= c0) & (c < c0 + cut_w)  # (M, W)
    cut = in_r.unsqueeze(2) & in_c.unsqueeze(1)
    return (~cut).to(dtype)


def _cutout(x: Tensor, ox: Tensor, oy: Tensor, ratio: float) -> Tensor:
    M, _, H, W = x.shape
    return x * _cutout_mask(M, H, W, ox, oy, ratio, x.dtype, x.device).unsqueeze(1)


def _apply(op: str, x: Tensor, d: dict[str, Tensor], p: DSAParams) -> Tensor:
    if op == "color":
        return _color(x, d["bright"], d["sat"], d["contrast"], p)
    if op == "crop":
        return _crop(x, d["tx"], d["ty"])
    if op == "cutout":
        return _cutout(x, d["ox"], d["oy"], p.ratio_cutout)
    if op == "flip":
        return _flip(x, d["flip"], p.prob_flip)
    if op == "scale":
        return _scale(x, d["sx"], d["sy"])
    if op == "rotate":
        return _rotate(x, d["rot"])
    raise AssertionError(op)  # parse_strategy validated the names


# ---------------------------------------------------------------------------------------------


def diff_augment(
    x: Tensor,
    strategy: str,
    groups: Tensor | None = None,
    generator: torch.Generator | None = None,
    params: DSAParams = DSAParams(),  # noqa: B008 (frozen, so a shared default is safe)
    *,
    num_groups: int | None = None,
) -> Tensor:
    """Apply one DSA op group per Siamese group (or one for the whole call if ``groups=None``).

    ``x``: (N, C, H, W) float tensor, any device.  ``groups``: int64 (N,) ids in
    ``[0, num_groups)``; samples with the same id get the same op and parameters.
    ``num_groups`` defaults to ``groups.max() + 1``; pass it (e.g. the number of classes) so
    that separate calls agree even when the largest id is absent from one of them.
    Returns a tensor of the shape and dtype of ``x``, differentiable with respect to ``x``.
    """
    ops = parse_strategy(strategy)
    if not ops:
        return x
    if x.dim() != 4:
        raise ValueError(f"diff_augment expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    N, _, H, W = x.shape
    if N == 0:
        return x

    if groups is None:
        d = _draw(ops, N, True, (H, W), params, generator)
        op = ops[int(d.pop("op"))]
        d = {k: v.to(x.device) for k, v in d.items()}
        return _apply(op, x, d, params).contiguous()

    groups = torch.as_tensor(groups)
    if groups.shape != (N,) or groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise ValueError(f"groups must be an integer tensor of shape ({N},)")
    groups = groups.to(device=x.device, dtype=torch.long)
    lo, hi = (int(v) for v in torch.aminmax(groups))
    G = hi + 1 if num_groups is None else int(num_groups)
    if lo < 0 or hi >= G:
        raise ValueError(f"group ids must lie in [0, {G}), got [{lo}, {hi}]")

    d = _draw(ops, G, False, (H, W), params, generator)
    d = {k: v.to(x.device) for k, v in d.items()}
    op_of_sample = d.pop("op")[groups]  # (N,)
    per_sample = {k: v[groups] for k, v in d.items()}

    counts = torch.bincount(op_of_sample, minlength=len(ops)).tolist()
    chosen = [k for k, n in enumerate(counts) if n > 0]
    if len(chosen) == 1:  # everyone drew the same op: no index / scatter needed
        return _apply(ops[chosen[0]], x, per_sample, params).contiguous()

    idx_parts, out_parts = [], []
    for k in chosen:  # at most len(DSA_OPS) iterations, never one per sample or group
        idx = torch.nonzero(op_of_sample == k).squeeze(1)
        sub = {name: v[idx] for name, v in per_sample.items()}
        idx_parts.append(idx)
        out_parts.append(_apply(ops[k], x[idx], sub, params))
    idx_all = torch.cat(idx_parts)  # a permutation of 0..N-1
    inv = torch.empty_like(idx_all)
    inv[idx_all] = torch.arange(N, device=x.device)
    return torch.cat(out_parts)[inv].contiguous()
