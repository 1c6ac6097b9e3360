"""DataBundle: a dataset's train/test tensors, normalised, with its classes and statistics."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DataBundle:
    """Train and test splits as float tensors normalised with ``mean``/``std``.

    ``name`` is the dataset spec as given (e.g. ``digits``, ``imagefolder:/data/c10``).
    ``dsa_strategy`` is the dataset's default DSA strategy: the reference drops ``flip``
    for digit datasets (MNIST, SVHN), where a flip changes the class.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    #: set by the ``zca`` condition: images are whitened pixels, shown through its inverse
    zca: Any = None
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False, compare=False)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.x_train.shape[2]), int(self.x_train.shape[3]))

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices of training images of class ``c`` (computed once)."""
        if self._by_class is None:
            order = torch.argsort(self.y_train, stable=True)
            counts = torch.bincount(self.y_train, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        return self._by_class[c]

    def fingerprint(self) -> str:
        """sha256 of the training images and labels (computed once): part of the key of
        anything derived from them (expert trajectories, the ZCA fit)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for t in (self.x_train, self.y_train):
                h.update(str((t.dtype, tuple(t.shape))).encode())
                h.update(t.contiguous().view(torch.uint8).numpy().data)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def class_counts(self) -> list[int]:
        return torch.bincount(self.y_train, minlength=self.num_classes).tolist()

    def sample_indices(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of ``n`` random training images of class ``c`` (all if fewer)."""
        idx = self.class_indices(c)
        return idx[torch.randperm(len(idx), generator=generator)[:n]]

    def sample_class(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random training images of class ``c`` without replacement (all if fewer)."""
        return self.x_train[self.sample_indices(c, n, generator)]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel space, for viewing."""
        if self.zca is not None:
            return self.zca.inverse(x).clamp(0, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)
