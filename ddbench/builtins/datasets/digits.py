"""scikit-learn's 8x8 digits: a dataset that ships with a package, so tests and smoke runs
need no files and no network."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from ddbench.components import DatasetSpec
from ddbench.data.bundle import DataBundle
from ddbench.data.cache import RawSplits
from ddbench.data.normalize import NO_FLIP, channel_stats, to_bundle


class Digits(DatasetSpec):
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); no download needed.

    Pixels 0..16 are scaled to [0, 1]. The split is fixed and stratified:
    ``train_test_split(test_size=0.3, stratify=y, random_state=0)``, giving 1,257 train
    and 540 test images, each split kept in the original order. Normalisation uses the
    per-channel mean/std of the train split. DSA strategy without flip.
    """

    name = "digits"
    test_size: ClassVar[float] = 0.3
    split_seed: ClassVar[int] = 0

    def load(self, arg: str | None, root: Path, download: bool) -> DataBundle:
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        images = torch.from_numpy(np.asarray(d.images).round().astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(np.asarray(d.target).astype(np.int64))
        idx = np.arange(len(labels))
        tr, te = train_test_split(
            idx, test_size=self.test_size, stratify=d.target, random_state=self.split_seed
        )
        tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
        raw = RawSplits(
            images[tr].contiguous(), labels[tr], images[te].contiguous(), labels[te],
            [str(c) for c in d.target_names],
        )
        mean, std = channel_stats(raw.x_train, 16.0)
        return to_bundle(self.name, raw, mean, std, NO_FLIP, scale=16.0)
