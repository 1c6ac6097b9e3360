"""torchvision's dataset classes, imported lazily, and its CIFAR/SVHN readers made lenient.

torchvision compares every CIFAR pickle and SVHN ``.mat`` file with the md5 of the
official release, so a file in the same format that is not byte-identical (re-pickled,
converted, written by a test) is rejected as "corrupted". The readers here replace those
md5 checks by existence checks. They are only used on files already present (never with
``download=True``); downloads go through torchvision's own classes, which keep verifying
the md5 of what they fetch.
"""

from __future__ import annotations

import functools
import os
import pickle


def tv_datasets():
    """``torchvision.datasets``, imported on first use: registering datasets does not need it."""
    import torchvision.datasets

    return torchvision.datasets


class _ExistenceCheckCIFAR:
    """torchvision's CIFAR reader with the md5 checks replaced by existence checks."""

    root: str
    base_folder: str
    train_list: list
    test_list: list
    meta: dict

    def _check_integrity(self) -> bool:
        return all(
            os.path.isfile(os.path.join(self.root, self.base_folder, fname))
            for fname, _md5 in self.train_list + self.test_list
        )

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = list(data[self.meta["key"]])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _ExistenceCheckSVHN:
    """torchvision's SVHN reader with its md5 check replaced by an existence check."""

    root: str
    filename: str

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


@functools.cache
def lenient_readers() -> dict[str, type]:
    """The existence-checking subclasses of torchvision's CIFAR10, CIFAR100 and SVHN."""
    tvd = tv_datasets()
    return {
        "CIFAR10": type("CIFAR10", (_ExistenceCheckCIFAR, tvd.CIFAR10), {}),
        "CIFAR100": type("CIFAR100", (_ExistenceCheckCIFAR, tvd.CIFAR100), {}),
        "SVHN": type("SVHN", (_ExistenceCheckSVHN, tvd.SVHN), {}),
    }
