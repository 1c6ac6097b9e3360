"""Drawing real images per class: the ``random`` baseline, the real initialisation of
DM/DC/MTT and the real batches of every matching loss share this one sampler."""

from __future__ import annotations

import torch

from ddbench.data.bundle import DataBundle


def sample_per_class(data: DataBundle, n: int, generator: torch.Generator):
    """``n`` random real images of every class (all of a class when it has fewer): (x, y)."""
    images, labels = [], []
    for c in range(data.num_classes):
        x = data.sample_class(c, n, generator)
        images.append(x)
        labels.append(torch.full((len(x),), c, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)
