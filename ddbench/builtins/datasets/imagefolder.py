"""``imagefolder:PATH``: your own images, one folder per class, train and test side by side.

The folders are scanned with ``os.scandir`` on plain strings, and the cache key is the
(path, size, mtime) of every image, so adding, editing or removing an image decodes the
folder again while an unchanged one loads from the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from ddbench.builtins.datasets.cifar import CIFAR10, CIFAR100
from ddbench.builtins.datasets.mnist import MNIST, FashionMNIST
from ddbench.builtins.datasets.svhn import SVHN
from ddbench.components import DatasetSpec
from ddbench.data import cache
from ddbench.data.bundle import DataBundle
from ddbench.data.cache import RawSplits
from ddbench.data.files import dataset_error, params_dict
from ddbench.data.images import decode_images
from ddbench.data.normalize import WITH_FLIP, channel_stats, to_bundle
from ddbench.errors import DDBenchError
from ddbench.params import Check

#: ``stats=NAME``: the reference normalisation constants of the built-in datasets (mean, std)
REFERENCE_STATS = {cls.name: (cls.mean, cls.std) for cls in (MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100)}


def _stats_ok(value: str) -> bool:
    return value == "train" or value in REFERENCE_STATS


#: file suffixes ``imagefolder`` reads (case-insensitive); other files are ignored
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan_tree(top: str, out: list[tuple[str, int, int]]) -> None:
    """Append (path, size, mtime_ns) of the images under ``top``, sorted, recursively.

    Plain strings and ``os.scandir`` (not pathlib): 60,000 files take a fraction of a second.
    """
    dirs = []
    with os.scandir(top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir():
            dirs.append(e.path)
        elif _is_image(e.name) and e.is_file():
            st = e.stat()
            out.append((e.path, st.st_size, st.st_mtime_ns))
    for d in dirs:
        _scan_tree(d, out)


def _scan_split(split_dir: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Class folder name -> (path, size, mtime_ns) of its images, sorted by path."""
    classes: dict[str, list[tuple[str, int, int]]] = {}
    with os.scandir(split_dir) as it:
        subdirs = sorted((e for e in it if not e.name.startswith(".") and e.is_dir()),
                         key=lambda e: e.name)
    for entry in subdirs:
        files: list[tuple[str, int, int]] = []
        _scan_tree(entry.path, files)
        classes[entry.name] = files
    return classes


class ImageFolder(DatasetSpec):
    """Your own images: imagefolder:PATH reads PATH/train/<class>/* and PATH/test/<class>/*.

    Classes are the sorted names of the train subfolders; the test split must have the
    same class folders. Images (jpg, jpeg, png, bmp, gif, webp, tif, tiff, ppm, pgm, pbm;
    searched recursively inside each class folder, hidden names skipped) are decoded as RGB
    (or grayscale with ``grayscale=true``), their shorter side resized to ``size``
    (antialiased) and centre-cropped to ``size`` x ``size``. Normalisation uses the
    per-channel mean/std of the decoded train split, or with ``stats=cifar10`` (any
    dataset of ``REFERENCE_STATS``) that dataset's reference constants: a copy of CIFAR-10
    is then normalised as the reference code normalises CIFAR-10 (its std 0.2023... is not
    the data's 0.247..., which scales every pixel-space step: DC/DSA's image lr, DSA's
    brightness, the noise init). DSA strategy with flip.
    """

    name = "imagefolder"
    takes_argument = True
    #: added after results were stored: at "train" left out of keys, so those stay valid
    late_params = {"stats": "train"}

    @dataclass
    class Params:
        size: int = field(default=32, metadata={"help": "side of the square images, in pixels"})
        grayscale: bool = field(default=False, metadata={"help": "decode as one channel"})
        stats: Annotated[str, Check(_stats_ok, "train or one of " + ", ".join(REFERENCE_STATS))] = field(
            default="train", metadata={"help": "normalisation: the train split's own mean/std, or a dataset's reference constants"})

    def load(self, arg: str | None, root: Path, download: bool) -> DataBundle:
        if not arg:
            raise DDBenchError("dataset 'imagefolder' needs a path: imagefolder:PATH")
        spec = f"{self.name}:{arg}"
        p = self.params if self.params is not None else self.Params()
        if p.size < 1:
            raise dataset_error(spec, f"size must be a positive number of pixels, got {p.size}")
        path = Path(arg).expanduser().resolve()
        layout = f"expected {path}/train/<class>/*.jpg and {path}/test/<class>/*.jpg"
        if not path.is_dir():
            raise dataset_error(spec, f"folder {path} does not exist ({layout})")
        splits = {}
        for split in ("train", "test"):
            d = path / split
            if not d.is_dir():
                raise dataset_error(spec, f"no folder {d} ({layout})")
            splits[split] = _scan_split(d)
        train, test = splits["train"], splits["test"]
        if not train:
            raise dataset_error(spec, f"no class folders in {path / 'train'} ({layout})")
        if set(train) != set(test):
            only_train = sorted(set(train) - set(test))
            only_test = sorted(set(test) - set(train))
            parts = []
            if only_train:
                parts.append(f"missing in test: {', '.join(only_train)}")
            if only_test:
                parts.append(f"not in train: {', '.join(only_test)}")
            raise dataset_error(
                spec, f"test classes differ from train classes in {path} ({'; '.join(parts)})"
            )
        for c, files in train.items():
            if not files:
                exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
                raise dataset_error(spec, f"class folder {path / 'train' / c} has no images ({exts})")
        classes = sorted(train)
        train_files = [f[0] for c in classes for f in train[c]]
        test_files = [f[0] for c in classes for f in test[c]]
        sources = cache.fingerprint_stats(f for split in (train, test) for c in classes for f in split[c])

        def labels(split: dict[str, list]) -> torch.Tensor:
            return torch.tensor([i for i, c in enumerate(classes) for _ in split[c]], dtype=torch.int64)

        def decode() -> RawSplits:
            return RawSplits(
                decode_images(train_files, p.size, p.grayscale, spec), labels(train),
                decode_images(test_files, p.size, p.grayscale, spec), labels(test),
                classes,
            )

        decoding = {k: v for k, v in params_dict(p).items() if k != "stats"}  # stats act after the cache
        raw = cache.cached(Path(root).expanduser(), f"{self.name}:{path}", decoding, sources, decode)
        if p.stats == "train":
            mean, std = channel_stats(raw.x_train, 255.0)
        else:
            mean, std = REFERENCE_STATS[p.stats]
            if len(mean) != raw.x_train.shape[1]:
                raise dataset_error(spec, f"stats={p.stats} are for {len(mean)}-channel images, these have "
                                          f"{raw.x_train.shape[1]} (grayscale={p.grayscale})")
        return to_bundle(spec, raw, mean, std, WITH_FLIP)
