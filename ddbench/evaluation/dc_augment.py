"""DC's evaluation-time augmentation ("DC augmentation"), vectorised over the batch.

DC (VICO-UoE/DatasetCondensation, ``utils.py``) trains its evaluation networks on the
synthetic set with ``augment(images, dc_aug_param, device)``, called from ``epoch`` for every
training minibatch when DSA is off and the strategy chosen by ``get_daparam`` is not 'none'.
Its semantics, reproduced here:

* The strategy is split on '_'; every image gets exactly one op, drawn uniformly over the
  list entries (``np.random.permutation(augs)[0]``; a repeated op counts twice).
* The per-channel mean of the whole (unaugmented) minibatch is taken once, before any op.
* crop: pad by ``crop`` pixels filled with the channel mean, then take an HxW window at
  row/column offsets drawn independently from {0, ..., 2*crop-1} (so the content moves by
  -crop+1 ... +crop pixels; the range is not symmetric).  Integer shifts, no interpolation.
* scale: ``h = int(U(1-s, 1+s) * H)``, ``w = int(U(1-s, 1+s) * H)`` (both from H, as the
  reference), nearest resize (``F.interpolate`` default mode), pasted centred on a zero
  canvas of side ``max(h, w, H, W)`` (offset ``int((side-h)/2)``), then the centre HxW
  window (offset ``int((side-H)/2)``).  The fill is 0, not the mean.
* rotate: integer angle from {-rotate, ..., rotate-1} degrees (``np.random.randint``),
  ``scipy.ndimage.rotate`` with its defaults (reshape=True, cubic spline with prefilter,
  mode 'constant') and ``cval`` = mean of the channel means (one scalar), then the centre
  HxW window of the enlarged output (offset ``int((out-H)/2)``).  So when ``out-H`` is odd
  the result sits half a pixel down/right of a centred rotation; source points outside
  [0, n-1] get exactly ``cval`` (no blending at the border).
* noise: add ``noise * N(0, 1)`` per pixel.

Here the op choice and all parameters are drawn as tensors from ``generator`` (on its
device, normally the CPU), then each op runs once on its whole subset of the batch.  Crop
and scale are exact index gathers (bit-identical to the reference for the same draws).
Rotate re-implements scipy's cubic B-spline path in torch (mirror-boundary prefilter as a
small solved matrix, 4x4 spline taps with mirrored indices, ``cval`` wherever the source
coordinate falls outside [0, n-1], scipy's output-shape and offset formulas), in float64.

Deviations from the reference:

* Random streams: torch's generator instead of numpy's global RNG, so the same seed does
  not give the reference's draws; the distributions are the same.
* rotate: scipy filters along each axis with a recursive IIR filter; here the same mirror
  system is solved exactly as a matrix, and the angle's sine/cosine come from torch
  instead of ``scipy.special.cosdg``.  Results agree with scipy to about 1e-6, except
  that a source coordinate within rounding error of an image edge could be classed
  differently (pixel or ``cval``).
* Parameters the reference crashes on (crop=0, rotate=0) give the identity here; an
  unknown op raises ``DDBenchError`` instead of being silently skipped.
* The result is a new tensor; the reference overwrites its (collated) batch in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from ddbench.errors import DDBenchError, choices_error

__all__ = ["DC_OPS", "DCAugParams", "dc_augment", "dc_strategy"]

DC_OPS = ("crop", "scale", "rotate", "noise")


@dataclass(frozen=True)
class DCAugParams:
    """The reference ``get_daparam`` values; ``strategy`` is kept so one object can carry
    the whole reference dict (``dc_augment(x, p.strategy, g, p)``)."""

    crop: int = 4
    scale: float = 0.2
    rotate: int = 45
    noise: float = 0.001
    strategy: str = "none"

    def __post_init__(self):
        if self.crop < 0 or self.rotate < 0 or self.noise < 0 or not 0 <= self.scale < 1:
            raise DDBenchError(
                f"bad DC augmentation parameters {self}: need crop, rotate, noise >= 0 "
                "and 0 <= scale < 1"
            )


def dc_strategy(dataset: str, model: str, norm: str | None = None) -> str:
    """The reference ``get_daparam`` rule in ddbench names.

    The reference sets 'crop_scale_rotate' when ``dataset == 'MNIST'`` (so not
    FashionMNIST), then overrides it with 'crop_noise' when ``model_eval == 'ConvNetBN'``
    (ConvNet-3 with batch norm; other BN nets such as AlexNetBN or ResNet18BN get nothing).
    Its ``model`` (training net) and ``ipc`` arguments are unused.  Here the evaluation
    ConvNet is ``model='convnet'`` with ``norm='batchnorm'``; width, depth and activation
    are not checked (the reference's ConvNetASwishBN, swish + BN, would get 'none').
    """
    if model == "convnet" and norm == "batchnorm":
        return "crop_noise"
    if dataset == "mnist":
        return "crop_scale_rotate"
    return "none"


def _parse(strategy: str) -> list[str]:
    if strategy in ("", "none"):
        return []
    ops = strategy.split("_")
    for op in ops:
        if op not in DC_OPS:
            raise choices_error(f"DC augmentation op (in strategy {strategy!r})", op, DC_OPS)
    return ops


def _crop(x: Tensor, mean: Tensor, pad: int, r: Tensor, c: Tensor) -> Tensor:
    """Window at offsets (r, c) of x padded by ``pad`` with the channel ``mean``."""
    n, ch, h, w = x.shape
    canvas = mean.to(x.dtype).view(1, ch, 1, 1).repeat(n, 1, h + 2 * pad, w + 2 * pad)
    canvas[:, :, pad : pad + h, pad : pad + w] = x
    rows = r.view(n, 1) + torch.arange(h, device=x.device)
    cols = c.view(n, 1) + torch.arange(w, device=x.device)
    canvas = canvas.gather(2, rows.view(n, 1, h, 1).expand(n, ch, h, w + 2 * pad))
    return canvas.gather(3, cols.view(n, 1, 1, w).expand(n, ch, h, w))


def _nearest_src(k: Tensor, size_in: int, size_out: Tensor) -> Tensor:
    """``F.interpolate(mode='nearest')`` source index: floor(k * float32(in/out)), clamped."""
    scale = torch.tensor(float(size_in), dtype=torch.float32, device=k.device) / size_out.float()
    return torch.floor(k.float() * scale.view(-1, 1)).long().clamp(max=size_in - 1)


def _scale(x: Tensor, h_new: Tensor, w_new: Tensor) -> Tensor:
    """Nearest resize to (h_new, w_new), centred on a zero canvas, centre HxW window."""
    n, ch, h, w = x.shape
    side = torch.stack([h_new, w_new, torch.full_like(h_new, h), torch.full_like(h_new, w)]).amax(0)
    ky = torch.arange(h, device=x.device) + ((side - h) // 2 - (side - h_new) // 2).view(n, 1)
    kx = torch.arange(w, device=x.device) + ((side - w) // 2 - (side - w_new) // 2).view(n, 1)
    ok_y = (ky >= 0) & (ky < h_new.view(n, 1))
    ok_x = (kx >= 0) & (kx < w_new.view(n, 1))
    src_y, src_x = _nearest_src(ky, h, h_new), _nearest_src(kx, w, w_new)
    src_y, src_x = src_y.clamp(min=0), src_x.clamp(min=0)
    out = x.gather(2, src_y.view(n, 1, h, 1).expand(n, ch, h, w))
    out = out.gather(3, src_x.view(n, 1, 1, w).expand(n, ch, h, w))
    keep = (ok_y.view(n, 1, h, 1) & ok_x.view(n, 1, 1, w)).to(x.dtype)
    return out * keep


@lru_cache(maxsize=32)
def _prefilter_matrix(n: int) -> Tensor:
    """Inverse of the cubic B-spline sampling matrix with mirror boundaries (scipy's
    ``spline_filter`` for mode 'constant'/'mirror'), as a float64 CPU matrix."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    a = torch.zeros(n, n, dtype=torch.float64)
    for k in range(n):
        a[k, k] += 4 / 6
        for j in (k - 1, k + 1):
            a[k, -j if j < 0 else (2 * (n - 1) - j if j > n - 1 else j)] += 1 / 6
    return torch.linalg.inv(a)


def _mirror(j: Tensor, n: int) -> Tensor:
    if n == 1:
        return torch.zeros_like(j)
    j = j.abs()
    return torch.where(j > n - 1, 2 * (n - 1) - j, j)


def _bspline3(f: Tensor) -> list[Tensor]:
    """Cubic B-spline weights of the taps floor(t)-1 .. floor(t)+2 at fraction f."""
    return [
        (1 - f) ** 3 / 6,
        (4 - 6 * f**2 + 3 * f**3) / 6,
        (1 + 3 * f + 3 * f**2 - 3 * f**3) / 6,
        f**3 / 6,
    ]


def _rotate(x: Tensor, angle: Tensor, cval: float) -> Tensor:
    """scipy.ndimage.rotate(angle, reshape=True, order=3, mode='constant', cval), centre
    HxW window of the enlarged result; ``angle`` in degrees, one per image."""
    n, ch, h, w = x.shape
    dev, f64 = x.device, torch.float64
    rad = angle.to(dev, f64) * (math.pi / 180)
    c, s = torch.cos(rad).view(n, 1, 1), torch.sin(rad).view(n, 1, 1)
    # scipy's enlarged output shape: ptp of the rotated corners, + 0.5, truncated
    cy = torch.tensor([0.0, 0.0, h, h], dtype=f64, device=dev)
    cx = torch.tensor([0.0, w, 0.0, w], dtype=f64, device=dev)
    by, bx = c.view(n, 1) * cy + s.view(n, 1) * cx, -s.view(n, 1) * cy + c.view(n, 1) * cx
    out_h = torch.floor(by.amax(1) - by.amin(1) + 0.5).view(n, 1, 1)
    out_w = torch.floor(bx.amax(1) - bx.amin(1) + 0.5).view(n, 1, 1)
    off_y = (h - 1) / 2 - (c * (out_h - 1) / 2 + s * (out_w - 1) / 2)
    off_x = (w - 1) / 2 - (-s * (out_h - 1) / 2 + c * (out_w - 1) / 2)
    oy = torch.arange(h, dtype=f64, device=dev).view(1, h, 1) + torch.trunc((out_h - h) / 2)
    ox = torch.arange(w, dtype=f64, device=dev).view(1, 1, w) + torch.trunc((out_w - w) / 2)
    ty, tx = c * oy + s * ox + off_y, -s * oy + c * ox + off_x  # (n, h, w) source coords
    outside = (ty < 0) | (ty > h - 1) | (tx < 0) | (tx > w - 1)
    coef = _prefilter_matrix(h).to(dev) @ x.to(f64) @ _prefilter_matrix(w).to(dev).T
    coef = coef.reshape(n, ch, h * w)
    y0, x0 = torch.floor(ty), torch.floor(tx)
    wy, wx = _bspline3(ty - y0), _bspline3(tx - x0)
    y0, x0 = y0.long(), x0.long()
    jy = [_mirror(y0 + (i - 1), h) * w for i in range(4)]
    jx = [_mirror(x0 + (k - 1), w) for k in range(4)]
    acc = torch.zeros(n, ch, h * w, dtype=f64, device=dev)
    for i in range(4):
        for k in range(4):
            idx = (jy[i] + jx[k]).view(n, 1, h * w).expand(n, ch, h * w)
            acc += (wy[i] * wx[k]).view(n, 1, h * w) * coef.gather(2, idx)
    acc = acc.view(n, ch, h, w).masked_fill(outside.view(n, 1, h, w), cval)
    return acc.to(x.dtype)


@torch.no_grad()
def dc_augment(
    images: Tensor, strategy: str, generator: torch.Generator, params: DCAugParams = DCAugParams()
) -> Tensor:
    """DC ``augment`` on a batch (N, C, H, W) in normalised space; returns a new tensor.

    Every image gets one op drawn uniformly from the strategy's '_'-separated list; the
    op choice and parameters come from ``generator`` only.  'none' or '' is the identity.
    """
    ops = _parse(strategy)
    if not ops:
        return images
    if images.dim() != 4:
        raise DDBenchError(
            f"DC augmentation needs images (N, C, H, W), got shape {tuple(images.shape)}"
        )
    n, _, h, w = images.shape
    out = images.detach().clone()
    if n == 0:
        return out
    dev, gdev = images.device, generator.device
    mean = images.detach().mean(
        dim=(0, 2, 3), dtype=torch.float32
    )  # before any op, as the reference
    choice = torch.randint(len(ops), (n,), generator=generator, device=gdev)
    for op in dict.fromkeys(ops):
        hits = torch.tensor([i for i, o in enumerate(ops) if o == op], device=gdev)
        idx = torch.isin(choice, hits).nonzero().view(-1)
        k = idx.numel()
        if k == 0:
            continue
        idx = idx.to(dev)
        x = images[idx].detach()
        if op == "crop":
            if params.crop == 0:
                continue
            r, c = torch.randint(2 * params.crop, (2, k), generator=generator, device=gdev).to(dev)
            out[idx] = _crop(x, mean, params.crop, r, c)
        elif op == "scale":
            u = torch.rand(2, k, generator=generator, device=gdev, dtype=torch.float64)
            hw = torch.floor((1 - params.scale + 2 * params.scale * u) * h).long().to(dev)
            out[idx] = _scale(x, hw[0], hw[1])
        elif op == "rotate":
            if params.rotate == 0:
                continue
            a = torch.randint(-params.rotate, params.rotate, (k,), generator=generator, device=gdev)
            out[idx] = _rotate(x, a.to(dev), float(mean.double().mean()))
        else:  # noise
            z = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(dev)
            out[idx] = x + params.noise * z
    return out
