"""Comparison tables and significance summaries from grouped results (``ddbench.analysis.results``),
rendered for the terminal, Markdown, LaTeX (booktabs), CSV and JSON.

Within a cell every pair of methods is tested (or each method against ``against``); the
Holm family is every test in the report, so a claim like "A > B on cifar10/ipc10" keeps
its error rate however many cells the report has. Across cells of a table, methods present
in every cell are ranked (Friedman, Iman-Davenport, Nemenyi).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace

from tabulate import tabulate

from ddbench.analysis import scores, stats
from ddbench.analysis.protocols import protocol_line
from ddbench.analysis.results import SEED, CellId, Filters, LateParams, Table, group, load_rows

ALPHA = stats.ALPHA


@dataclass
class Analysis:
    tables: list[Table]
    comparisons: list[stats.Comparison] = field(default_factory=list)  # .cell = (table index, CellId)
    ranks: dict[int, stats.RankTest] = field(default_factory=dict)  # table index -> test
    against: str | None = None
    #: DD-Ranking's scores (``ddbench.analysis.scores``) where the tables hold the cells they need
    scores: list = field(default_factory=list)
    score_weights: tuple[float, float] = (0.5, 0.5)
    #: per (table index, cell): the method with the best mean, and those significantly below it
    _best: dict[tuple, str] = field(default_factory=dict)
    _below: dict[tuple, set[str]] = field(default_factory=dict)

    def best(self, ti: int, cell: CellId) -> str | None:
        return self._best.get((ti, cell))

    def worse_than_best(self, ti: int, cell: CellId) -> set[str]:
        """Methods significantly below the cell's best (Holm-adjusted)."""
        return self._below.get((ti, cell), set())

    def _mark(self) -> None:
        for ti, table in enumerate(self.tables):
            for cell, samples in table.cells.items():
                means = {m: stats.describe(s.values.values()).mean for m, s in samples.items() if s.values}
                if means:
                    self._best[(ti, cell)] = max(means, key=means.get)
        for c in self.comparisons:
            best = self._best.get(c.cell)
            if c.p_holm < ALPHA and best in (c.a, c.b):
                self._below.setdefault(c.cell, set()).add(c.b if c.a == best else c.a)


def restrict(tables: list[Table], methods: list[str]) -> list[Table]:
    """Only ``methods`` (exact labels), in that order; tables and cells left empty are dropped."""
    out = []
    for t in tables:
        cells = {c: {m: s[m] for m in methods if m in s} for c, s in t.cells.items()}
        cells = {c: s for c, s in cells.items() if s}
        if cells:
            out.append(replace(t, methods=[m for m in methods if m in t.methods], cells=cells))
    return out


def analyse(tables: list[Table], against: str | None = None, lrs_weight: float = 0.5,
            ars_weight: float = 0.5) -> Analysis:
    an = Analysis(tables, against=against, scores=scores.compute(tables, lrs_weight, ars_weight),
                  score_weights=(lrs_weight, ars_weight))
    for ti, table in enumerate(tables):
        for cell in table.sorted_cells():
            samples = {m: s for m, s in table.cells[cell].items() if s.values}
            methods = [m for m in table.methods if m in samples]
            pairs = ([(against, m) for m in methods if m != against] if against in samples else
                     [] if against else list(itertools.combinations(methods, 2)))
            for a, b in pairs:
                c = stats.compare(samples[a].values, samples[b].values, label_a=a, label_b=b)
                c.cell = (ti, cell)
                an.comparisons.append(c)
        full = [m for m in table.methods
                if all(m in s and s[m].values for s in table.cells.values())]
        if len(full) >= 3 and len(table.cells) >= 2:
            matrix = [[stats.describe(table.cells[c][m].values.values()).mean for m in full]
                      for c in table.sorted_cells()]
            an.ranks[ti] = stats.rank_test(matrix, full)
    stats.apply_holm([c for c in an.comparisons if c.tested])
    an._mark()
    return an


# ------------------------------------------------------------------ formatting helpers

def _pct(x: float, digits: int = 1) -> str:
    return "-" if x is None or math.isnan(x) else f"{x * 100:.{digits}f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float) -> str:
    """'= 0.012' or '< 0.001', to follow a name in a sentence."""
    return "< 0.001" if p < 0.001 else f"= {_p(p)}"


def _units(table: Table) -> str:
    units = {s.unit for cs in table.cells.values() for s in cs.values()}
    if units == {SEED}:
        return "distillation seed (each seed's evaluation runs averaged first)"
    if len(units) == 1:
        return "evaluation run (one distillation seed per method)"
    return "distillation seed where a method has several seeds in a cell, else evaluation run"


def _entry(an: Analysis, ti: int, cell: CellId, method: str, fmt: str) -> str:
    s = an.tables[ti].cells[cell].get(method)
    if s is None:
        return "-"
    d = stats.describe(s.values.values())
    if d.n == 0:
        text = "-"
    elif fmt == "latex":
        text = f"{_pct(d.mean)} $\\pm$ {_pct(d.std) if d.n > 1 else '-'}"
    else:
        text = f"{_pct(d.mean)} ± {_pct(d.std) if d.n > 1 else '-'}"
    best = d.n and an.best(ti, cell) == method and len(an.tables[ti].cells[cell]) > 1
    worse = method in an.worse_than_best(ti, cell)
    if fmt == "latex":
        if best:
            text = f"\\textbf{{{text}}}"
        if worse:
            text += "$^\\dagger$"
    elif fmt == "markdown":
        if best:
            text = f"**{text}**"
        if worse:
            text += " †"
    else:
        text += " *" if best else ""
        text += " †" if worse else ""
    if fmt != "latex" and d.n:
        text += f" (n={d.n})"
    if s.failed:
        text += f" [{s.failed} failed]"
    return text


def _table_rows(an: Analysis, ti: int, fmt: str) -> tuple[list[str], list[list[str]]]:
    table = an.tables[ti]
    headers = ["dataset", "ipc", "model", *table.methods]
    rows = []
    for cell in table.sorted_cells():
        rows.append([cell.dataset_label, cell.ipc, cell.model,
                     *[_entry(an, ti, cell, m, fmt) for m in table.methods]])
    return headers, rows


def _footer(an: Analysis, ti: int, marks: tuple[str, str]) -> str:
    table = an.tables[ti]
    superseded = sum(s.superseded for cs in table.cells.values() for s in cs.values())
    best, dagger = marks
    lines = [f"test accuracy %, mean ± std over n; unit of replication: {_units(table)}",
             f"{best}: best mean in the row; {dagger}: significantly below it "
             f"(Holm-adjusted p < {ALPHA} over the report's {sum(c.tested for c in an.comparisons)} tests)",
             protocol_line(table)]
    if superseded:
        lines.append(f"{superseded} older synthetic set(s) sharing a seed with a newer one of the "
                     "same method were left out")
    return "\n".join(lines)


# ------------------------------------------------------------------ renderers

def render_text(an: Analysis, tablefmt: str = "simple") -> str:
    if not an.tables:
        return "no results"
    parts = []
    for ti in range(len(an.tables)):
        headers, rows = _table_rows(an, ti, "text")
        parts.append(tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)
                     + "\n\n" + _footer(an, ti, ("*", "†")))
        if ti in an.ranks:
            parts.append(rank_text(an.ranks[ti]))
    if an.scores:
        parts.append(scores.render(an.scores, *an.score_weights))
    return "\n\n".join(parts)


def render_markdown(an: Analysis) -> str:
    if not an.tables:
        return "no results\n"
    parts = []
    for ti in range(len(an.tables)):
        headers, rows = _table_rows(an, ti, "markdown")
        foot = _footer(an, ti, ("bold", "†")).replace("\n", "  \n")
        parts.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
                     + "\n\n" + foot)
        if ti in an.ranks:
            parts.append("```\n" + rank_text(an.ranks[ti]) + "\n```")
    parts.append("## Significance\n\n" + significance_summary(an, limit=None))
    return "\n\n".join(parts) + "\n"


def _tex(s: str) -> str:
    for ch in "_%&#${}":
        s = s.replace(ch, "\\" + ch)
    return s.replace("±", "$\\pm$")


def render_latex(an: Analysis) -> str:
    """One booktabs table per protocol; needs \\usepackage{booktabs}."""
    out = []
    for ti, table in enumerate(an.tables):
        headers, rows = _table_rows(an, ti, "latex")
        cols = "lll" + "c" * len(table.methods)
        ns = {stats.describe(s.values.values()).n for cs in table.cells.values() for s in cs.values()}
        n_text = f"n = {ns.pop()} per entry" if len(ns) == 1 else "n varies by entry"
        caption = (f"Test accuracy (\\%), mean $\\pm$ std, {n_text}; unit: {_tex(_units(table))}. "
                   f"Bold: best in the row; $^\\dagger$: significantly below it (Holm-adjusted "
                   f"$p < {ALPHA}$). {_tex(protocol_line(table))}.")
        lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{caption}}}",
                 f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
                 " & ".join(_tex(h) for h in headers) + " \\\\", "\\midrule"]
        for r in rows:
            lines.append(" & ".join([_tex(r[0]), r[1], _tex(r[2]), *r[3:]]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _cell_records(an: Analysis) -> list[dict]:
    recs = []
    for ti, table in enumerate(an.tables):
        for cell in table.sorted_cells():
            for m in table.methods:
                s = table.cells[cell].get(m)
                if s is None:
                    continue
                d = stats.describe(s.values.values())
                recs.append({
                    "protocol": table.protocol, "protocol_hash": table.protocol_hash, "env": table.env,
                    "dataset": cell.dataset, "conditions": cell.conditions, "ipc": cell.ipc,
                    "model": cell.model, "method": m, "unit": s.unit, "n": d.n, "mean": d.mean,
                    "std": d.std, "ci_low": d.ci_low, "ci_high": d.ci_high, "failed": s.failed,
                    "seeds": s.seeds, "best": an.best(ti, cell) == m,
                })
    return recs


def render_csv(an: Analysis) -> str:
    buf = io.StringIO()
    recs = _cell_records(an)
    fields = [k for k in (recs[0] if recs else {"dataset": 0}) if k != "seeds"]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in recs:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _nan_to_none(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def render_json(an: Analysis) -> str:
    comps = []
    for c in an.comparisons:
        ti, cell = c.cell
        d = asdict(c)
        d.pop("cell")
        comps.append({"protocol_hash": an.tables[ti].protocol_hash, "env": an.tables[ti].env,
                      **asdict(cell), **d})
    ranks = []
    for ti, r in an.ranks.items():
        d = asdict(r)
        d["nemenyi"] = r.nemenyi.tolist()
        ranks.append({"protocol_hash": an.tables[ti].protocol_hash, "env": an.tables[ti].env, **d})
    doc = {"alpha": ALPHA, "holm_family": sum(c.tested for c in an.comparisons),
           "tables": [{"protocol": t.protocol, "protocol_hash": t.protocol_hash,
                       "protocol_params": t.protocol_params, "env": t.env, "methods": t.methods}
                      for t in an.tables],
           "cells": _cell_records(an), "comparisons": comps, "rank_tests": ranks,
           "scores": [asdict(s) for s in an.scores]}
    return json.dumps(_nan_to_none(doc), indent=2, sort_keys=False) + "\n"


RENDERERS = {"text": render_text, "markdown": render_markdown, "latex": render_latex,
             "csv": render_csv, "json": render_json}


# ------------------------------------------------------------------ summaries

def comparison_line(c: stats.Comparison) -> str:
    _, cell = c.cell
    win, lose, diff = (c.a, c.b, c.diff) if c.diff >= 0 else (c.b, c.a, -c.diff)
    sign = ">" if c.p_holm < ALPHA else "~"
    return (f"{win} {sign} {lose} on {cell.short()}: +{diff * 100:.1f} pp "
            f"[{_signed(c, win)}], p_holm {_p_is(c.p_holm)} ({c.t_test}, n = {c.n_a} vs {c.n_b})")


def _signed(c: stats.Comparison, win: str) -> str:
    lo, hi = (c.boot_low, c.boot_high) if win == c.a else (-c.boot_high, -c.boot_low)
    return f"95% CI {lo * 100:+.1f} to {hi * 100:+.1f}"


def significance_summary(an: Analysis, limit: int | None = 10) -> str:
    tested = [c for c in an.comparisons if c.tested]
    untested = [c for c in an.comparisons if not c.tested]
    sig = sorted((c for c in tested if c.p_holm < ALPHA), key=lambda c: c.p_holm)
    lines = [f"significance: {len(sig)} of {len(tested)} pairwise difference(s) significant at "
             f"{ALPHA} after Holm"]
    if untested:
        lines[0] += f"; {len(untested)} pair(s) not tested ({_reasons(untested)})"
    shown = sig if limit is None else sig[:limit]
    lines += [f"  {comparison_line(c)}" for c in shown]
    if len(sig) > len(shown):
        lines.append(f"  ... and {len(sig) - len(shown)} more (`ddbench report` lists all)")
    for ti, r in an.ranks.items():
        lines.append(f"  ranks over {r.n_blocks} cells ({an.tables[ti].protocol} #{an.tables[ti].protocol_hash[:8]}): "
                     f"Friedman p {_p_is(r.p_chi2)}, Iman-Davenport p {_p_is(r.p_f)}, "
                     f"permutation p {_p_is(r.p_perm)}; best "
                     f"{r.methods[min(range(len(r.methods)), key=r.avg_ranks.__getitem__)]}")
    return "\n".join(lines)


def _reasons(untested: list[stats.Comparison]) -> str:
    notes = sorted({c.note.split(" (")[0] for c in untested})
    return "; ".join(notes)


#: below this many cells the rank test's output warns that its approximations are loose
FEW_CELLS = 10


def rank_text(r: stats.RankTest) -> str:
    order = sorted(range(len(r.methods)), key=r.avg_ranks.__getitem__)
    rows = [[r.methods[i], f"{r.avg_ranks[i]:.2f}"] for i in order]
    head = (f"average ranks over {r.n_blocks} cells (1 = best): Friedman chi2 = {r.chi2:.2f}, "
            f"p {_p_is(r.p_chi2)}; Iman-Davenport F = {r.f_stat:.2f}, p {_p_is(r.p_f)}; "
            f"permutation p {_p_is(r.p_perm)}; Nemenyi CD ({ALPHA}) = {r.cd:.2f}")
    if r.n_blocks < FEW_CELLS:
        head += (f"\nonly {r.n_blocks} cells: the chi2 and F p-values are large-sample approximations; "
                 f"trust the permutation p")
    return head + "\n" + tabulate(rows, headers=["method", "avg rank"], disable_numparse=True)


def compare_text(an: Analysis, a: str, b: str) -> str:
    """A vs B in every cell where both have results, then across those cells."""
    comps = [c for c in an.comparisons if {c.a, c.b} == {a, b}]
    if not comps:
        return f"no cell has results for both {a!r} and {b!r}"
    rows, means = [], []
    for c in comps:
        _, cell = c.cell
        flip = c.a != a
        diff = -c.diff if flip else c.diff
        lo, hi = ((-c.boot_high, -c.boot_low) if flip else (c.boot_low, c.boot_high))
        ti, _ = c.cell
        ma = stats.describe(an.tables[ti].cells[cell][a].values.values())
        mb = stats.describe(an.tables[ti].cells[cell][b].values.values())
        means.append((ma.mean, mb.mean))
        g = -c.hedges_g if flip else c.hedges_g
        rows.append([cell.dataset_label, cell.ipc, cell.model, f"{_pct(ma.mean)} ± {_pct(ma.std)}",
                     f"{_pct(mb.mean)} ± {_pct(mb.std)}", f"{diff * 100:+.1f}",
                     "-" if math.isnan(lo) else f"{lo * 100:+.1f} to {hi * 100:+.1f}",
                     c.t_test if c.tested else c.note.split(" (")[0], _p(c.p_t), _p(c.p_holm),
                     "-" if math.isnan(g) else f"{g:+.2f}"])
    text = tabulate(rows, headers=["dataset", "ipc", "model", a, b, "diff pp", "95% CI (bootstrap)",
                                   "test", "p", "p_holm", "Hedges g"], disable_numparse=True)
    better = sum(x > y for x, y in means)
    sig_a = sum(c.p_holm < ALPHA and (c.diff > 0) == (c.a == a) for c in comps)
    sig_b = sum(c.p_holm < ALPHA for c in comps) - sig_a
    foot = [f"{a} has the higher mean in {better} of {len(comps)} shared cell(s); significantly "
            f"better in {sig_a}, significantly worse in {sig_b} (Holm over {sum(c.tested for c in comps)} tests)"]
    if len(means) >= 5:
        w = stats.compare({i: x for i, (x, _) in enumerate(means)}, {i: y for i, (_, y) in enumerate(means)})
        foot.append(f"across cells (per-cell means paired): Wilcoxon signed-rank p {_p_is(w.p_rank)}, "
                    f"paired t p {_p_is(w.p_t)}")
    else:
        foot.append("across cells: too few shared cells for a test over cells (need 5+)")
    return text + "\n\n" + "\n".join(foot)


def run_statistics(store, run_id: str, late: LateParams, specs=None) -> dict:
    """The report of one run as the JSON ``--format json`` prints (what an export carries)."""
    return json.loads(render_json(analyse(group(load_rows(store, Filters(run=run_id)), late, specs=specs))))
