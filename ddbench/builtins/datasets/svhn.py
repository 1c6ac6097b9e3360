"""SVHN from the official ``.mat`` files, read with an existence-checking torchvision reader.

torchvision's SVHN reads the folder it is given, so the files get one of their own,
``<root>/svhn/``; only the train and test splits are used (not ``extra``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from ddbench.builtins.datasets.files import FileDataset
from ddbench.data.cache import RawSplits
from ddbench.data.normalize import NO_FLIP
from ddbench.data.readers import lenient_readers, tv_datasets


class SVHN(FileDataset):
    """SVHN house-number digits (73,257 + 26,032 32x32 colour), official .mat files.

    Files: ``<root>/svhn/{train,test}_32x32.mat`` (label 10 is digit 0). Existence-checked
    like ``cifar10``; reference normalisation; DSA strategy without flip.
    """

    name = "svhn"
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    dsa_strategy = NO_FLIP
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def folder(self, root: Path) -> Path:
        return root / "svhn"

    def expected(self) -> list[str]:
        tv = tv_datasets().SVHN
        return [tv.split_list[s][1] for s in self.splits]

    def urls(self) -> list[str]:
        tv = tv_datasets().SVHN
        return [tv.split_list[s][0] for s in self.splits]

    def download(self, root: Path) -> None:
        tv = tv_datasets().SVHN
        folder = self.folder(root)
        for s in self.splits:
            if not (folder / tv.split_list[s][1]).is_file():
                tv(str(folder), split=s, download=True)

    def decode(self, root: Path) -> RawSplits:
        import numpy as np

        reader = lenient_readers()["SVHN"]
        out = []
        for s in self.splits:
            ds = reader(str(self.folder(root)), split=s, download=False)
            x = torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8))  # N,C,H,W
            out += [x, torch.as_tensor(ds.labels, dtype=torch.int64)]
        return RawSplits(*out, [str(i) for i in range(10)])
