"""Figures for a report (matplotlib, Agg): accuracy vs IPC, hyperparameter sensitivity,
MI estimates over iterations, distillation cost, critical-difference diagrams and the
synthetic image grids, each as PNG and PDF, with an index (Markdown and HTML).
"""

from __future__ import annotations

import html
import math
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddbench.analysis import (
    results,
    stats,  # noqa: E402
)
from ddbench.analysis.report import Analysis, protocol_line  # noqa: E402
from ddbench.analysis.results import Table  # noqa: E402
from ddbench.storage.records import SynsetRow  # noqa: E402
from ddbench.storage.store import Store  # noqa: E402

DPI = 120


@dataclass
class Figure:
    name: str  # file stem
    title: str
    caption: str


def _save(fig, out: Path, name: str, tight: bool = False) -> None:
    """PNG and PDF; panel figures keep their size (panels x 4.2 x 3.2 in at DPI), and the
    CD diagram is cropped to its labels (``tight``), whose widths vary."""
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{name}.{ext}", dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)


def _panels(n: int, width: float = 4.2, height: float = 3.2):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _finish(ax, ipcs=None, **labels) -> None:
    """Titles and labels, a light grid and a small legend; an IPC axis is logarithmic with
    the IPC values as its ticks."""
    if ipcs:
        ax.set_xscale("log")
        ax.set_xticks(ipcs, labels=[str(i) for i in ipcs])
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _mean_std(values) -> tuple[float, float]:
    d = stats.describe(values)
    return d.mean * 100, (0.0 if math.isnan(d.std) else d.std * 100)


def accuracy_vs_ipc(table: Table, out: Path, name: str) -> Figure | None:
    panels = sorted({(c.dataset_label, c.model) for c in table.cells if c.ipc.isdigit()})
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, (ds, model) in zip(axes, panels, strict=True):
        cells = sorted((c for c in table.cells if (c.dataset_label, c.model) == (ds, model) and c.ipc.isdigit()),
                       key=lambda c: int(c.ipc))
        for m in table.methods:
            pts = [(int(c.ipc), *_mean_std(table.cells[c][m].values.values()))
                   for c in cells if m in table.cells[c] and table.cells[c][m].values]
            if pts:
                x, y, e = zip(*pts, strict=True)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m)
        _finish(ax, sorted({int(c.ipc) for c in cells}), title=f"{ds} / {model}",
                xlabel="images per class", ylabel="test accuracy (%)")
    _save(fig, out, name)
    return Figure(name, "Accuracy vs IPC", f"mean ± std per method; {protocol_line(table)}")


_SWEEP = re.compile(r"^(?P<base>[^\[]+)\[(?P<params>[^\]]+)\]$")


def _sweeps(methods: list[str]) -> dict[tuple[str, str], list[tuple[float, str]]]:
    """(base label, parameter) -> [(value, method label)] for variants that differ in one
    numeric swept parameter (labels like ``dm+mim[lambda=0.4]``)."""
    parsed = defaultdict(list)
    for m in methods:
        g = _SWEEP.match(m)
        if not g:
            continue
        kv = dict(p.split("=", 1) for p in g["params"].split(",") if "=" in p)
        parsed[g["base"]].append((kv, m))
    out = {}
    for base, variants in parsed.items():
        keys = {k for kv, _ in variants for k in kv}
        for k in keys:
            others = {tuple(sorted((a, b) for a, b in kv.items() if a != k)) for kv, _ in variants}
            if len(others) != 1:
                continue
            try:
                pts = sorted((float(kv[k]), m) for kv, m in variants if k in kv)
            except ValueError:
                continue
            if len(pts) >= 2:
                out[(base, k)] = pts
    return out


def sensitivity(table: Table, out: Path, name: str) -> Figure | None:
    sweeps = _sweeps(table.methods)
    panels = [(sw, c) for sw in sorted(sweeps) for c in table.sorted_cells()
              if sum(m in table.cells[c] for _, m in sweeps[sw]) >= 2]
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, ((base, param), cell) in zip(axes, panels, strict=True):
        pts = [(v, *_mean_std(table.cells[cell][m].values.values()))
               for v, m in sweeps[(base, param)] if m in table.cells[cell]]
        x, y, e = zip(*pts, strict=True)
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=base)
        plain = base.split("+")[0]
        if plain in table.cells[cell]:  # the method without the swept component, for reference
            my, me = _mean_std(table.cells[cell][plain].values.values())
            ax.axhline(my, color="gray", ls="--", label=f"{plain} ({my:.1f} ± {me:.1f})")
        _finish(ax, title=f"{base}: {param} ({cell.short()})", xlabel=param, ylabel="test accuracy (%)")
    _save(fig, out, name)
    return Figure(name, "Hyperparameter sensitivity", "mean ± std per value of each swept parameter; "
                  "dashed: the base method without the swept component")


def mi_traces(store: Store, table: Table, out: Path, name: str) -> Figure | None:
    """Per (cell's dataset/IPC, method): each recorded MI series, mean over seeds with a
    min-max band, and its ceiling."""
    panels = {}
    for cell in table.sorted_cells():
        for m, s in table.cells[cell].items():
            key = (cell.dataset_label, cell.ipc, m)
            if key in panels:
                continue
            series = [store.trace(k) for k in s.distill_keys]
            series = [t for t in series if t]
            if series:
                panels[key] = series
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, ((ds, ipc, m), runs) in zip(axes, panels.items(), strict=True):
        names = sorted({n for t in runs for n in t})
        for n in names:
            curves = [dict(t[n]) for t in runs if n in t]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            if not steps:
                continue
            vals = [[c[s] for c in curves] for s in steps]
            mean = [sum(v) / len(v) for v in vals]
            style = {"ls": "--", "color": "black"} if n.endswith("ceiling") else {}
            line = ax.plot(steps, mean, label=n, **style)[0]
            if len(curves) > 1 and not n.endswith("ceiling"):
                ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals],
                                alpha=0.2, color=line.get_color())
        _finish(ax, title=f"{m} — {ds} ipc{ipc}", xlabel="iteration", ylabel="estimate (nats)")
    _save(fig, out, name)
    return Figure(name, "MI estimates over iterations",
                  "mean over seeds (band: min to max) of each recorded series; dashed: its ceiling")


def cost(synsets: list[SynsetRow], out: Path, name: str) -> Figure | None:
    rows = [r for r in synsets if r.ok and r.seconds_per_iter and r.ipc]
    datasets = sorted({r.dataset for r in rows})
    if not rows:
        return None
    fig, axes = plt.subplots(len(datasets), 2, figsize=(9, 3.2 * len(datasets)), squeeze=False)
    for (ax_t, ax_m), ds in zip(axes, datasets, strict=True):
        by = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r.dataset == ds:
                by[r.method][r.ipc].append(r)
        for m, ipcs in sorted(by.items()):
            x = sorted(ipcs)
            ax_t.plot(x, [sum(r.seconds_per_iter for r in ipcs[i]) / len(ipcs[i]) for i in x], "o-", label=m)
            ax_m.plot(x, [max(r.peak_mem_mb for r in ipcs[i]) for i in x], "o-", label=m)
        devices = ", ".join(sorted({r.device for r in rows if r.dataset == ds}))
        ipcs = sorted({i for m in by.values() for i in m})
        for ax, ylabel in ((ax_t, "seconds / iteration"), (ax_m, "peak memory (MB)")):
            _finish(ax, ipcs, title=f"{ds} — {devices}", xlabel="images per class", ylabel=ylabel)
            # costs from zero: an axis spanning 0.07 MB would make a process's noise look like a trend
            ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-9))
    _save(fig, out, name)
    return Figure(name, "Distillation cost", "seconds per iteration (mean over seeds) and peak memory "
                  "(max over seeds) by IPC; one row per dataset (its number of classes fixes the rest)")


def cd_diagram(an: Analysis, ti: int, out: Path, name: str) -> Figure | None:
    import pandas as pd
    import scikit_posthocs as sp

    r = an.ranks.get(ti)
    if r is None or math.isnan(r.cd):
        return None
    ranks = pd.Series(r.avg_ranks, index=r.methods)
    sig = pd.DataFrame(r.nemenyi, index=r.methods, columns=r.methods)
    fig, ax = plt.subplots(figsize=(8, 1 + 0.4 * len(r.methods)))
    sp.critical_difference_diagram(ranks, sig, ax=ax, alpha=stats.ALPHA)
    ax.set_title(f"average rank over {r.n_blocks} cells (Nemenyi CD = {r.cd:.2f}, Friedman p = {r.p_chi2:.3g})",
                 fontsize=9)
    _save(fig, out, name, tight=True)
    return Figure(name, "Critical-difference diagram", "methods joined by a bar are not significantly "
                  f"different (Nemenyi, alpha {stats.ALPHA}); {protocol_line(an.tables[ti])}")


def image_grids(store: Store, table: Table, out: Path) -> list[Figure]:
    """The stored PNG grid of one synthetic set (the lowest seed) per method, dataset and IPC."""
    figs, seen = [], set()
    for cell in table.sorted_cells():
        for m, s in table.cells[cell].items():
            key = (m, cell.dataset_label, cell.ipc)
            if key in seen or not s.distill_keys:
                continue
            seen.add(key)
            row = store.synset(s.distill_keys[0])
            src = store.path.parent / row.grid if row and row.grid else None
            if src is None or not src.is_file():
                continue
            stem = "grid_" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{m}_{cell.dataset_label}_ipc{cell.ipc}")
            shutil.copyfile(src, out / f"{stem}.png")
            figs.append(Figure(stem, f"Synthetic images: {m}, {cell.dataset_label}, IPC {cell.ipc}",
                               f"seed {s.seeds[0]}; one column per class, shown un-whitened"))
    return figs


def write_all(an: Analysis, store: Store, out: Path) -> list[Figure]:
    """Every figure the analysis supports, then index.md and index.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figs: list[Figure] = []
    multi = len(an.tables) > 1
    for ti, table in enumerate(an.tables):
        sfx = f"_{ti + 1}" if multi else ""
        for fn, stem in ((accuracy_vs_ipc, "accuracy_vs_ipc"), (sensitivity, "sensitivity")):
            f = fn(table, out, stem + sfx)
            if f:
                figs.append(f)
        f = mi_traces(store, table, out, "mi_traces" + sfx)
        if f:
            figs.append(f)
        f = cd_diagram(an, ti, out, "critical_difference" + sfx)
        if f:
            figs.append(f)
        figs += image_grids(store, table, out)
    f = cost(results.synsets(store, an.tables), out, "cost")
    if f:
        figs.append(f)
    _index(figs, out)
    return figs


def _index(figs: list[Figure], out: Path) -> None:
    from ddbench.storage.atomic import write_atomic

    md = ["# ddbench report figures", ""]
    page = ["<!doctype html><meta charset='utf-8'><title>ddbench report</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}</style>",
            "<h1>ddbench report figures</h1>"]
    for f in figs:
        pdf = (out / f"{f.name}.pdf").is_file()
        md += [f"## {f.title}", "", f"![{f.title}]({f.name}.png)", "",
               f"{f.caption}" + (f" ([PDF]({f.name}.pdf))" if pdf else ""), ""]
        page += [f"<h2>{html.escape(f.title)}</h2>", f"<img src='{f.name}.png' alt='{html.escape(f.title)}'>",
                 f"<p>{html.escape(f.caption)}" + (f" (<a href='{f.name}.pdf'>PDF</a>)" if pdf else "") + "</p>"]
    if not figs:
        md.append("No figures: the selection has no results.")
        page.append("<p>No figures: the selection has no results.</p>")
    write_atomic(out / "index.md", "\n".join(md) + "\n")
    write_atomic(out / "index.html", "\n".join(page) + "\n")
