"""The two greedy selection rules, on a feature matrix of one class (no ddbench needed).

Both return the indices (int64, in selection order, no repeats) of ``min(k, n)`` rows
of ``features`` (n, d). Distances are computed in float64 on the features' device, and
ties go to the lowest index, so a selection is a deterministic function of the features.
"""

from __future__ import annotations

import torch


def _prepare(features: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    if features.dim() != 2:
        raise ValueError(f"features must be (n, d), got shape {tuple(features.shape)}")
    if k < 0:
        raise ValueError(f"cannot select {k} items")
    return features.detach().to(torch.float64), min(k, len(features))


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding (Welling 2009; the exemplar selection of iCaRL and DC's baseline).

    With ``mu`` the mean feature, step ``t`` (1-based) adds the unselected row ``i``
    minimising ``|| mu - (sum of the selected rows + f_i) / t ||``, so the running mean
    of the selection tracks ``mu``.
    """
    f, k = _prepare(features, k)
    mu = f.mean(0)
    total = torch.zeros_like(mu)
    taken = torch.zeros(len(f), dtype=torch.bool, device=f.device)
    chosen: list[int] = []
    for t in range(1, k + 1):
        gap = ((mu - (total + f) / t) ** 2).sum(1)
        gap[taken] = float("inf")
        i = int(gap.argmin())
        chosen.append(i)
        taken[i] = True
        total += f[i]
    return torch.tensor(chosen, dtype=torch.long)


def k_center(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center (Sener & Savarese 2018), started from the row closest to the mean.

    Each further step adds the row whose distance to its nearest selected row is largest
    (farthest-first traversal, a 2-approximation of the k-center cover).
    """
    f, k = _prepare(features, k)
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    nearest = ((f - f[first]) ** 2).sum(1)  # squared distance to the nearest selected row
    nearest[first] = -1.0  # below any distance: never chosen again, even among duplicates
    for _ in range(k - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, ((f - f[i]) ** 2).sum(1))
        nearest[i] = -1.0
    return torch.tensor(chosen, dtype=torch.long)
