"""CIFAR-10 and CIFAR-100 from the official python pickles.

Files live where torchvision puts them, ``<root>/cifar-10-batches-py/`` and
``<root>/cifar-100-python/``. Files present are read with the existence-checking readers
of :mod:`ddbench.data.readers`; ``--download`` fetches the md5-checked archive.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from ddbench.builtins.datasets.files import FileDataset
from ddbench.data.cache import RawSplits
from ddbench.data.readers import lenient_readers, tv_datasets


class _CIFARDataset(FileDataset):
    tv_class: ClassVar[str] = ""

    def _tv(self):
        return getattr(tv_datasets(), self.tv_class)

    def folder(self, root: Path) -> Path:
        return root / self._tv().base_folder

    def expected(self) -> list[str]:
        tv = self._tv()
        return [f for f, _ in tv.train_list + tv.test_list] + [tv.meta["filename"]]

    def urls(self) -> list[str]:
        return [self._tv().url]

    def download(self, root: Path) -> None:
        self._tv()(str(root), train=True, download=True)

    def download_creates(self, root: Path) -> list[Path]:
        return super().download_creates(root) + [root / self._tv().filename]

    def decode(self, root: Path) -> RawSplits:
        reader = lenient_readers()[self.tv_class]
        tr = reader(str(root), train=True, download=False)
        te = reader(str(root), train=False, download=False)

        def images(ds) -> torch.Tensor:  # torchvision keeps N,H,W,C
            return torch.from_numpy(ds.data).to(torch.uint8).permute(0, 3, 1, 2).contiguous()

        def labels(ds) -> torch.Tensor:
            return torch.as_tensor(ds.targets, dtype=torch.int64)

        return RawSplits(images(tr), labels(tr), images(te), labels(te), list(tr.classes))


class CIFAR10(_CIFARDataset):
    """CIFAR-10 (50,000 + 10,000 32x32 colour images, 10 classes), official python pickles.

    Files: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``. Files
    present are used as they are (existence check, not torchvision's md5 of the official
    release); ``--download`` fetches the md5-checked archive. Reference normalisation.
    """

    name = "cifar10"
    tv_class = "CIFAR10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)

    def expected_text(self) -> str:
        return "data_batch_1..data_batch_5, test_batch, batches.meta"


class CIFAR100(_CIFARDataset):
    """CIFAR-100 (50,000 + 10,000 32x32 colour images, 100 fine classes), official pickles.

    Files: ``<root>/cifar-100-python/{train,test,meta}``; labels are the fine labels.
    Existence-checked like ``cifar10``; reference normalisation.
    """

    name = "cifar100"
    tv_class = "CIFAR100"
    mean = (0.5071, 0.4866, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
