"""MNIST and Fashion-MNIST: idx files read through torchvision, ``.gz`` gunzipped in place.

Files live where torchvision puts them, ``<root>/MNIST/raw/`` and
``<root>/FashionMNIST/raw/``. torchvision reads only the uncompressed files, so ``.gz``
copies (the form the files are usually shared in) are decompressed next to themselves
first, the same way torchvision's own download does.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
from pathlib import Path
from typing import ClassVar

import torch

from ddbench.builtins.datasets.files import FileDataset
from ddbench.data.cache import RawSplits
from ddbench.data.files import dataset_error, one_line
from ddbench.data.normalize import NO_FLIP, WITH_FLIP
from ddbench.data.readers import tv_datasets
from ddbench.storage.atomic import temp_name


def gunzip_next_to(gz: Path) -> Path:
    """Decompress ``x.gz`` into ``x`` in the same folder, atomically; returns ``x``."""
    target = gz.with_suffix("")
    tmp = temp_name(target)
    try:
        with open(tmp, "xb") as out, gzip.open(gz, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


class _IdxDataset(FileDataset):
    """MNIST-format (idx) datasets through torchvision; ``.gz`` files are gunzipped first."""

    tv_class: ClassVar[str] = ""
    dsa_strategy = WITH_FLIP

    def _tv(self):
        return getattr(tv_datasets(), self.tv_class)

    def folder(self, root: Path) -> Path:
        return root / self.tv_class / "raw"

    def _resources(self) -> list[str]:
        return [fname for fname, _md5 in self._tv().resources]

    def expected(self) -> list[str]:
        return [f.removesuffix(".gz") for f in self._resources()]

    def expected_text(self) -> str:
        return ", ".join(f"{f}[.gz]" for f in self.expected())

    def prepare(self, folder: Path) -> None:
        # torchvision reads the uncompressed files; its own download gunzips the same way
        for name in self.expected():
            gz = folder / f"{name}.gz"
            if not (folder / name).is_file() and gz.is_file():
                try:
                    gunzip_next_to(gz)
                except (OSError, EOFError) as exc:
                    hint = (
                        "copy the files to a writable data root"
                        if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EROFS
                        else "the file looks damaged: replace it"
                    )
                    raise dataset_error(
                        self.name, f"cannot decompress {gz} next to itself ({one_line(exc)}); {hint}"
                    ) from None

    def urls(self) -> list[str]:
        return list(self._tv().mirrors)

    def download(self, root: Path) -> None:
        self._tv()(str(root), train=True, download=True)

    def download_creates(self, root: Path) -> list[Path]:
        folder = self.folder(root)
        return [folder / f for f in self.expected()] + [folder / f for f in self._resources()]

    def classes(self) -> list[str]:
        return list(self._tv().classes)

    def decode(self, root: Path) -> RawSplits:
        tv = self._tv()
        tr = tv(str(root), train=True, download=False)
        te = tv(str(root), train=False, download=False)
        return RawSplits(
            tr.data.to(torch.uint8).unsqueeze(1).contiguous(), tr.targets.to(torch.int64),
            te.data.to(torch.uint8).unsqueeze(1).contiguous(), te.targets.to(torch.int64),
            self.classes(),
        )


class MNIST(_IdxDataset):
    """MNIST handwritten digits (60,000 + 10,000 28x28 grayscale) via torchvision.

    Files: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``,
    gunzipped in place). Classes ``0``..``9``; normalised with the reference's
    mean 0.1307 / std 0.3081; DSA strategy without flip.
    """

    name = "mnist"
    tv_class = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)
    dsa_strategy = NO_FLIP

    def classes(self) -> list[str]:
        return [str(i) for i in range(10)]


class FashionMNIST(_IdxDataset):
    """Fashion-MNIST clothing images (60,000 + 10,000 28x28 grayscale) via torchvision.

    Files: ``<root>/FashionMNIST/raw/`` in the MNIST idx format (``.gz`` gunzipped in place).
    Normalised with the reference's mean 0.2861 / std 0.3530.
    """

    name = "fashionmnist"
    tv_class = "FashionMNIST"
    mean = (0.2861,)
    std = (0.3530,)
