"""The distillation cost table, as reviewers of DD papers ask for it: a pure function of the
stored synthetic-set rows (``SynsetRow``), which carry everything it shows."""

from __future__ import annotations

from tabulate import tabulate

from ddbench.analysis.results import LateParams, variant_labels
from ddbench.data.conditions import dataset_label
from ddbench.storage.records import SynsetRow


def cost_table(synsets: list[SynsetRow], late: LateParams, tablefmt: str = "simple") -> str:
    """Per method variant x dataset x IPC x device: seconds per iteration and wall/CPU seconds
    of the whole distillation (means over seeds), peak memory (max over seeds) and the class
    count. Empty when nothing iterates. ``late``: ``Registry.late_params()``."""
    groups: dict[tuple, list[SynsetRow]] = {}
    label = variant_labels(synsets, late)
    for r in synsets:
        if r.ok and r.seconds_per_iter:
            ds = dataset_label(r.dataset, r.conditions)
            key = (ds, r.ipc if r.ipc is not None else -1, label[r.distill_key], r.device)
            groups.setdefault(key, []).append(r)

    def mean(got, column):
        vals = [getattr(r, column) for r in got if getattr(r, column) is not None]
        return f"{sum(vals) / len(vals):.3g}" if vals else "-"

    rows = []
    for (ds, ipc, method, device), got in sorted(groups.items()):
        classes = next((r.num_classes for r in got if r.num_classes is not None), "-")
        rows.append([method, ds, classes, "all" if ipc == -1 else ipc,
                     mean(got, "seconds_per_iter"), mean(got, "seconds"), mean(got, "cpu_seconds"),
                     f"{max(r.peak_mem_mb for r in got):.0f}", len(got), device])
    if not rows:
        return ""
    return tabulate(rows, headers=["method", "dataset", "classes", "ipc", "s/iter", "wall s", "cpu s",
                                   "peak MB", "sets", "device"],
                    tablefmt=tablefmt, disable_numparse=True)
