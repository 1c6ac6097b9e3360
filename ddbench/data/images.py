"""Decoding image files of any common format into one uint8 tensor of square images.

Decoding dominates loading a folder of images, so JPEGs are decoded a chunk at a time
by torchvision's libjpeg-turbo bindings; other formats go one by one through
torchvision, then PIL. Every image is brought to one square size so the split is one
tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ddbench.data.files import dataset_error, one_line

#: images read and decoded per batch by ``imagefolder``
DECODE_CHUNK = 4096


def _tv_decoders():
    """torchvision's ``(decode_jpeg, decode_image, ImageReadMode)``, or None without them.

    torchvision 0.29 deprecated these in favour of TorchCodec; should a release drop them,
    every image goes through PIL (about 3x slower on JPEGs).
    """
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:
        return None
    return decode_jpeg, decode_image, ImageReadMode


def _decode_one(data: bytearray, grayscale: bool) -> torch.Tensor:
    """Any format torchvision or PIL reads, as uint8 C,H,W."""
    tv = _tv_decoders()
    if tv is not None:
        _jpeg, decode_image, mode = tv
        try:
            img = decode_image(
                torch.frombuffer(data, dtype=torch.uint8), mode=mode.GRAY if grayscale else mode.RGB
            )
            if img.dim() == 4:  # animated: first frame
                img = img[0]
            if img.dtype == torch.uint8:
                return img
        except (RuntimeError, ValueError):
            pass
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as im:
        arr = np.array(im.convert("L" if grayscale else "RGB"))
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def _fit(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased), then centre-crop to size x size."""
    if tuple(img.shape[-2:]) == (size, size):
        return img
    from torchvision.transforms.v2 import functional as F

    img = F.resize(img, [size], antialias=True)
    return F.center_crop(img, [size, size])


def decode_images(
    files: Sequence[str | Path], size: int, grayscale: bool, name: str = "imagefolder"
) -> torch.Tensor:
    """Decode ``files`` into a uint8 ``(N, C, size, size)`` tensor (C = 1 or 3).

    Files are read in chunks of ``DECODE_CHUNK``; the JPEGs of a chunk are decoded in one
    call of torchvision's ``decode_jpeg`` (libjpeg-turbo), other formats one by one with
    ``decode_image``, then PIL. A file that cannot be decoded is an error naming it.
    """
    with warnings.catch_warnings():
        # torchvision >= 0.29 warns on every call that TorchCodec supersedes these
        warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
        return _decode_images(files, size, grayscale, name)


def _decode_images(files, size, grayscale, name) -> torch.Tensor:
    tv = _tv_decoders()
    out = torch.empty((len(files), 1 if grayscale else 3, size, size), dtype=torch.uint8)

    def one(path: str | Path, data: bytearray) -> torch.Tensor:
        try:
            if not data:
                raise ValueError("empty file")
            return _decode_one(data, grayscale)
        except Exception as exc:
            raise dataset_error(name, f"cannot decode image {path}: {one_line(exc)}") from None

    for start in range(0, len(files), DECODE_CHUNK):
        chunk = files[start : start + DECODE_CHUNK]
        datas = []
        for p in chunk:
            with open(p, "rb") as f:
                datas.append(bytearray(f.read()))
        decoded: dict[int, torch.Tensor] = {}
        jpeg = [i for i, d in enumerate(datas) if d[:3] == b"\xff\xd8\xff"]
        if jpeg and tv is not None:
            decode_jpeg, _image, mode = tv
            try:
                imgs = decode_jpeg(
                    [torch.frombuffer(datas[i], dtype=torch.uint8) for i in jpeg],
                    mode=mode.GRAY if grayscale else mode.RGB,
                )
                decoded = dict(zip(jpeg, imgs, strict=True))
            except (RuntimeError, ValueError):
                decoded = {}  # a bad file in the batch: decode one by one to name it
        for i, (p, d) in enumerate(zip(chunk, datas, strict=True)):
            img = decoded.get(i)
            if img is None:
                img = one(p, d)
            out[start + i] = _fit(img, size)
    return out
