"""``ddbench check``: stored results against a baseline, cell by cell, for CI and reproductions.

Per cell in both: a one-sided Welch t test of "ours is not worse than the baseline by more
than the tolerance" (``stats.shortfall``), Holm-adjusted over every tested cell, so a CI
sweep of many cells does not raise false alarms by multiplicity. A cell is a regression
when the adjusted p is below alpha: a drop within noise passes, a drop clearly beyond the
tolerance fails. Published numbers marked unverified are shown but never fail a check.
A published number that names its protocol is compared only with results of that protocol at
its published values (``ddbench.analysis.protocols``); results under a starred one are listed
as not comparable, never compared. Cells on one side only are listed; ``strict`` makes them
(and untestable and not comparable cells) fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tabulate import tabulate

from ddbench.analysis import stats
from ddbench.analysis.baselines import Baseline, BaselineCell, Key, now_iso
from ddbench.analysis.protocols import why_not_published
from ddbench.analysis.results import EVAL, Filters, Sample, Table
from ddbench.errors import DDBenchError
from ddbench.evaluation.protocol import label_mode
from ddbench.storage.records import ResultRow, RunRow

OK, NOISE, REGRESSION, UNVERIFIED, UNTESTED = "ok", "within noise", "REGRESSION", "below (unverified)", "untested"


@dataclass
class Row:
    key: Key
    base: BaselineCell
    ours: stats.Summary  # percent
    unit: str
    test: stats.Shortfall
    verdict: str = ""


@dataclass
class CheckResult:
    baseline: Baseline
    tolerance: float
    alpha: float
    rows: list[Row] = field(default_factory=list)
    missing_ours: list[Key] = field(default_factory=list)  # in the baseline, no results here
    missing_base: list[Key] = field(default_factory=list)  # results here, not in the baseline
    #: in the baseline, with results here only under its protocol away from its published values
    not_comparable: dict[Key, list[str]] = field(default_factory=dict)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == REGRESSION]

    @property
    def untested(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == UNTESTED]

    def failed(self, strict: bool) -> bool:
        if not self.rows or self.regressions:
            return True
        return strict and bool(self.missing_ours or self.missing_base or self.untested or self.not_comparable)


def unit_id(u) -> str:
    return "/".join(map(str, u)) if isinstance(u, tuple) else str(u)


def samples(tables: list[Table], baseline: Baseline,
            aside: dict[Key, list[str]] | None = None) -> dict[Key, tuple[Sample, Table]]:
    """Our sample per baseline key, from the tables the baseline may be compared with: those
    of its protocol hash when it records one (any environment: catching a change across
    library versions is the point), else all; for a published cell that names its protocol,
    only tables of that protocol at its published values (the others' protocols go to
    ``aside``, per key, to be reported). A key in two such tables is ambiguous."""
    want = baseline.protocol_hash
    eligible = [t for t in tables if want is None or t.protocol_hash == want]
    if want and tables and not eligible:
        have = ", ".join(sorted({f"{t.protocol} #{t.protocol_hash}" for t in tables}))
        raise DDBenchError(f"no results under the baseline's protocol #{want}; the selection has {have} "
                           "(same command as the baseline? see its 'commands')")
    out: dict[Key, tuple[Sample, Table]] = {}
    for t in eligible:
        for cell, by_method in t.cells.items():
            for method, sample in by_method.items():
                if not sample.values:
                    continue
                key = Key(cell.dataset, cell.conditions, cell.ipc, cell.model, method)
                base = baseline.cells.get(key)
                if base is not None and base.protocol and t.protocol.split("/")[0] != base.protocol:
                    continue  # a published number is compared with results of its protocol only
                if want is None and base is not None and \
                        (base.labels == "soft") != (label_mode(t.protocol_params) != "hard"):
                    continue  # and soft-label numbers with soft- or teacher-label results only
                if base is not None and base.protocol and t.deviations != {}:
                    if aside is not None:  # and at its published values only
                        aside.setdefault(key, []).append(why_not_published(t))
                    continue
                if key in out:
                    other = out[key][1]
                    raise DDBenchError(f"{key.short()} has results under two protocols/environments "
                                       f"({other.protocol} #{other.protocol_hash}, {other.env} and "
                                       f"{t.protocol} #{t.protocol_hash}, {t.env}); narrow with --run")
                out[key] = (sample, t)
    return out


def in_selection(key: Key, f: Filters) -> bool:
    return (f.dataset_ok(key.dataset) and (not f.ipcs or key.ipc in f.ipcs)
            and (not f.models or key.model in f.models)
            and (not f.conditions or key.conditions in f.conditions) and f.method_ok(key.method))


def check(baseline: Baseline, tables: list[Table], filters: Filters, *, tolerance: float | None = None,
          alpha: float = stats.ALPHA) -> CheckResult:
    tol = baseline.tolerance_pp if tolerance is None else tolerance
    res = CheckResult(baseline, tol, alpha)
    aside: dict[Key, list[str]] = {}
    ours = samples(tables, baseline, aside)
    for key in sorted(set(baseline.cells) | set(ours)):
        if key not in ours:
            if key in aside:
                res.not_comparable[key] = aside[key]
            elif in_selection(key, filters):
                res.missing_ours.append(key)
            continue
        if key not in baseline.cells:
            res.missing_base.append(key)
            continue
        sample, base = ours[key][0], baseline.cells[key]
        summ = stats.describe(100 * v for v in sample.values.values())
        base_n = len(base.values) if base.values else base.n
        test = stats.shortfall((summ.n, summ.mean, summ.std), (base_n, base.mean, base.std), tol)
        res.rows.append(Row(key, base, summ, sample.unit, test))
    tested = [r for r in res.rows if r.test.tested]
    for r, ph in zip(tested, stats.holm([r.test.p for r in tested]), strict=True):
        r.test.p_holm = ph
    for r in res.rows:
        if r.test.delta >= -tol:
            r.verdict = OK
        elif not r.test.tested:
            r.verdict = UNTESTED
        elif r.test.p_holm >= alpha:
            r.verdict = NOISE
        else:
            r.verdict = REGRESSION if r.base.verified else UNVERIFIED
    return res


def _ms(mean: float, std: float, n) -> str:
    s = "-" if std is None or math.isnan(std) else f"{std:.1f}"
    return f"{mean:.1f} ± {s} (n={'?' if n is None else n})"


def render(res: CheckResult, strict: bool = False) -> str:
    b = res.baseline
    proto = f", protocol #{b.protocol_hash}" if b.protocol_hash else ""
    lines = [f"check against {b.path} ({'published numbers' if b.kind == 'reported' else 'own baseline'}"
             f"{proto}): one-sided Welch t of 'ours >= baseline - {res.tolerance:g} pp', "
             f"Holm over {sum(r.test.tested for r in res.rows)} tested cell(s), alpha {res.alpha:g}", ""]
    if res.rows:
        table = []
        for r in res.rows:
            k = r.key
            flags = [f for f, on in (("soft labels", r.base.labels == "soft"),
                                     ("unverified", not r.base.verified and r.verdict != UNVERIFIED)) if on]
            n_base = len(r.base.values) if r.base.values else r.base.n
            p = "-" if math.isnan(r.test.p_holm) else f"{r.test.p_holm:.3f}"
            table.append([k.method, k.dataset if k.conditions == "clean" else f"{k.dataset} [{k.conditions}]",
                          k.ipc, k.model, _ms(r.base.mean, r.base.std, n_base),
                          _ms(r.ours.mean, r.ours.std, r.ours.n), f"{r.test.delta:+.1f}", p,
                          r.verdict + (f" ({', '.join(flags)})" if flags else "")])
        lines.append(tabulate(table, headers=["method", "dataset", "ipc", "model", "baseline", "ours",
                                              "delta pp", "p (Holm)", "verdict"], tablefmt="simple",
                              disable_numparse=True))
        notes = sorted({r.test.note for r in res.rows if r.test.note})
        units = sorted({r.unit for r in res.rows})
        lines.append(f"\nours: mean ± std over n {' / '.join(units)}s; "
                     f"p: Holm-adjusted one-sided p of a shortfall beyond the tolerance")
        lines += [f"note: {n}" for n in notes]
    for what, keys in (("in the baseline but not in these results", res.missing_ours),
                       ("in these results but not in the baseline", res.missing_base)):
        if keys:
            lines.append(f"\n{len(keys)} cell(s) {what}{' (fail: --strict)' if strict else ''}:")
            lines += [f"  {k.short()}" for k in keys]
    if res.not_comparable:
        lines.append(f"\n{len(res.not_comparable)} cell(s) in the baseline not compared, their results here "
                     f"not under the published protocol{' (fail: --strict)' if strict else ''}:")
        lines += [f"  {k.short()}: only under {'; '.join(why)}" for k, why in res.not_comparable.items()]
    lines.append("")
    if not res.rows and res.not_comparable:
        lines.append("FAILED: no cell compared; the results here are not under the published protocols (above)")
    elif not res.rows:
        lines.append("FAILED: no cell in common with the baseline (wrong store, --run or filters?)")
    elif res.failed(strict):
        what = [f"{len(res.regressions)} regression(s)"] if res.regressions else []
        if strict:
            what += [f"{len(x)} {name}" for x, name in ((res.missing_ours, "missing here"),
                                                       (res.missing_base, "missing in the baseline"),
                                                       (res.untested, "untested"),
                                                       (res.not_comparable, "not comparable")) if x]
        lines.append(f"FAILED: {', '.join(what)} over {len(res.rows)} compared cell(s)")
        lines += [f"  {r.key.short()}: {r.test.delta:+.1f} pp (p_holm {r.test.p_holm:.3g})" for r in res.regressions]
    else:
        lines.append(f"PASSED: {len(res.rows)} cell(s), no regression beyond {res.tolerance:g} pp")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class UpdateSummary:
    """What ``check --update`` changed, so a user sees whether re-run units reproduced."""
    cells: int
    added: int
    removed: int
    changed: int  # cells whose mean moved
    redone: int   # unit values present before and in the selection
    differ: int   # ... of which the selection's value differs

    def line(self, path) -> str:
        return (f"baseline {path}: {self.cells} cell(s); {self.added} new, {self.removed} removed, "
                f"{self.changed} with a changed mean; {self.redone} unit value(s) present before, "
                f"{self.differ} of them different now")


def summarize_update(old: Baseline | None, selected: dict[Key, BaselineCell], new: Baseline) -> UpdateSummary:
    olds = old.cells if old else {}
    redone = [(k, u) for k, c in selected.items() if k in olds for u in set(olds[k].values) & set(c.values)]
    return UpdateSummary(
        cells=len(new.cells), added=len(set(new.cells) - set(olds)), removed=len(set(olds) - set(new.cells)),
        changed=sum(1 for k, c in new.cells.items() if k in olds and round(olds[k].mean, 4) != round(c.mean, 4)),
        redone=len(redone),
        differ=sum(1 for k, u in redone if round(olds[k].values[u], 3) != round(selected[k].values[u], 3)))


def build(tables: list[Table], rows: list[ResultRow], runs: list[RunRow], old: Baseline | None, path,
          tolerance: float | None, merge: bool = False) -> tuple[Baseline, UpdateSummary]:
    """An own baseline from selected results (``check --update``): one protocol and
    environment only, every unit value kept, the producing commands and versions recorded.
    ``merge`` keeps ``old``'s cells and unit values that the selection lacks (a baseline
    gathered over several runs, e.g. seeds run on different days), same protocol only."""
    if not tables:
        raise DDBenchError("no results in this selection to build a baseline from")
    if len(tables) > 1:
        have = "; ".join(f"{t.protocol} #{t.protocol_hash}, {t.env}" for t in tables)
        raise DDBenchError(f"the selection spans {len(tables)} protocols/environments ({have}); "
                           "narrow it with --run or the filters")
    t = tables[0]
    cells = {}
    for cell, by_method in t.cells.items():
        for method, sample in by_method.items():
            if not sample.values:
                continue
            key = Key(cell.dataset, cell.conditions, cell.ipc, cell.model, method)
            values = {unit_id(u): 100 * v for u, v in sorted(sample.values.items())}
            s = stats.describe(values.values())
            cells[key] = BaselineCell(key, s.mean, s.std, s.n, unit=sample.unit, values=values)
    versions = {}
    for r in rows:
        versions.update(r.json_field("versions"))
    meta = dict(old.meta) if old else {}
    commands = [r.command for r in runs]
    presets = {r.preset for r in runs if r.preset}
    devices = {r.device for r in rows if r.device}
    revs = {r.git_rev for r in rows if r.git_rev}
    selected = cells
    if merge and old:
        cells = _merged(old, t, cells)
        env = meta.get("environment", {})
        commands = meta.get("commands", []) + commands
        presets |= set(meta.get("presets", []))
        devices |= set(env.get("devices", []))
        revs |= set(env.get("git_revs", []))
    meta.update(
        name=path.stem, created=now_iso(),
        tolerance_pp=tolerance if tolerance is not None else meta.get("tolerance_pp", 1.0),
        commands=list(dict.fromkeys(commands)),  # resumed runs repeat theirs
        presets=sorted(presets),
        protocol={"id": t.protocol, "hash": t.protocol_hash, "params": t.protocol_params},
        environment={"versions": versions, "devices": sorted(devices), "git_revs": sorted(revs)},
        unit_note=f"units: {EVAL}s when every method has one seed in a cell, else distillation seeds "
                  "(each seed's evaluation runs averaged); accuracies in percent")
    meta.setdefault("description", "")
    new = Baseline(path, "own", cells, meta)
    return new, summarize_update(old, selected, new)


def _merged(old: Baseline, t: Table, new: dict[Key, BaselineCell]) -> dict[Key, BaselineCell]:
    """``old``'s cells with ``new``'s unit values laid over them (a unit run again replaces its
    old value); refused across protocols or unit kinds, whose values do not pool."""
    if old.protocol_hash != t.protocol_hash:
        raise DDBenchError(f"--merge: {old.path} was built under protocol #{old.protocol_hash}, the "
                           f"selection under #{t.protocol_hash}; their values do not pool")
    cells = dict(old.cells)
    for key, cell in new.items():
        before = cells.get(key)
        if before is not None and before.unit != cell.unit:
            raise DDBenchError(f"--merge: {key.short()} holds {before.unit} units in {old.path} and "
                               f"{cell.unit} units in the selection; their values do not pool")
        values = {**(before.values if before else {}), **cell.values}
        values = dict(sorted(values.items(), key=lambda kv: (len(kv[0]), kv[0])))
        s = stats.describe(values.values())
        cells[key] = BaselineCell(key, s.mean, s.std, s.n, unit=cell.unit, values=values)
    return cells
