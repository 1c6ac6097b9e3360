"""Built-in datasets: digits, MNIST, FashionMNIST, SVHN, CIFAR-10/100 and image folders.

This module is the one plugin that registers them (it is what ``ddbench list`` names as
their origin); each family lives in a module of its own under :mod:`ddbench.data`.

Files live where torchvision puts them under the data root (``--data-root``):
``MNIST/raw/``, ``FashionMNIST/raw/``, ``svhn/{train,test}_32x32.mat``,
``cifar-10-batches-py/``, ``cifar-100-python/``. ``digits`` ships with scikit-learn and
needs no files. ``imagefolder:PATH`` reads ``PATH/train/<class>/*`` and
``PATH/test/<class>/*``.

Every loader decodes its files once into uint8 tensors kept in
``<root>/.ddbench-cache/`` (see :mod:`ddbench.data.cache`); normalisation to float
happens after the cache. Missing files are an error that names the folder searched and
the files expected, unless ``download`` is set, in which case torchvision fetches them
(checking their md5).
"""

from __future__ import annotations

from ddbench import hookimpl
from ddbench.builtins.datasets.cifar import CIFAR10, CIFAR100
from ddbench.builtins.datasets.digits import Digits
from ddbench.builtins.datasets.imagefolder import ImageFolder
from ddbench.builtins.datasets.mnist import MNIST, FashionMNIST
from ddbench.builtins.datasets.svhn import SVHN

#: in registration order
DATASETS = (Digits, MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, ImageFolder)


@hookimpl
def register_datasets(register):
    for cls in DATASETS:
        register(cls)
