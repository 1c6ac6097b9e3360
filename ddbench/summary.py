"""The end-of-run table: mean ± std per dataset × IPC × model (rows) and method (columns).

When a cell has several distillation seeds, each seed's evaluation runs are averaged
first and the std is over seeds (the seed is the unit of replication); with one seed
the std is over evaluation runs. The footer says which.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from tabulate import tabulate


def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    std = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def summary_table(jobs, rows: list[dict], tablefmt: str = "simple") -> str:
    by_key = {r["cell_key"]: r for r in rows}
    methods: list[str] = []
    groups: dict[tuple, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    failed: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for job in jobs:
        if job.label not in methods:
            methods.append(job.label)
        for cell in job.cells:
            row = by_key.get(cell.key)
            gkey = (job.dataset_label, job.ipc_label, cell.model_label, cell.protocol.label)
            if row is None:
                continue
            if row["status"] == "ok":
                groups[gkey][job.label][job.seed].append(row["accuracy"])
            else:
                failed[gkey][job.label] += 1
    unit_seed = False
    table = []
    for gkey in sorted(set(groups) | set(failed), key=_sort_key):
        line = list(gkey[:3])
        for m in methods:
            seeds = groups[gkey].get(m, {})
            if len(seeds) > 1:
                unit_seed = True
                vals = [statistics.fmean(v) for v in seeds.values()]
            else:
                vals = [a for v in seeds.values() for a in v]
            cell = f"{_fmt(vals)} (n={len(vals)})" if vals else "-"
            if failed[gkey].get(m):
                cell += f" [{failed[gkey][m]} failed]"
            line.append(cell)
        table.append(line)
    if not table:
        return "no results"
    text = tabulate(table, headers=["dataset", "ipc", "model", *methods], tablefmt=tablefmt,
                    disable_numparse=True)
    protocols = sorted({k[3] for k in groups} | {k[3] for k in failed})
    unit = "distillation seed (each seed's evaluation runs averaged first)" if unit_seed else "evaluation run"
    return (f"{text}\n\ntest accuracy %, mean ± std over n; unit of replication: {unit}; "
            f"protocol {', '.join(protocols)}")


def _sort_key(gkey):
    dataset, ipc, model, protocol = gkey
    return (dataset, ipc == "all", int(ipc) if ipc.isdigit() else 0, model, protocol)


def cost_table(jobs, synsets: list[dict], tablefmt: str = "simple") -> str:
    """Distillation cost per method × dataset × IPC: seconds per iteration and peak memory
    (mean and max over seeds), as reviewers of DD papers ask for. Empty when nothing iterates."""
    by_key = {r["distill_key"]: r for r in synsets if r["status"] == "ok"}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for job in jobs:
        row = by_key.get(job.key)
        if row is not None and row["seconds_per_iter"]:
            groups[(job.label, job.dataset_label, job.ipc_label)].append(row)
    if not groups:
        return ""
    table = []
    for (method, dataset, ipc), got in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        spi = statistics.fmean(r["seconds_per_iter"] for r in got)
        table.append([method, dataset, ipc, f"{spi:.3g}", f"{max(r['peak_mem_mb'] for r in got):.0f}",
                      got[0]["device"]])
    return tabulate(table, headers=["method", "dataset", "ipc", "s/iter", "peak MB", "device"],
                    tablefmt=tablefmt, disable_numparse=True)
