"""``ddbench report``, ``compare`` and ``check``: tables, tests and regressions rebuilt
from the store (pure functions of its rows and the registry)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from ddbench.analysis import report, results
from ddbench.analysis.cost_table import cost_table
from ddbench.cli.base import D, cli, registry
from ddbench.errors import DDBenchError
from ddbench.plan import split_list
from ddbench.storage.store import Store


def _analysis(store: Store, filters: results.Filters, reg, against=None, exact=None,
              weights: tuple[float, float] = (0.5, 0.5)):
    tables = results.group(results.load_rows(store, filters), reg.late_params(), specs=reg.protocol_specs())
    known = sorted({m for t in tables for m in t.methods})
    for what, m in [("method", m) for m in exact or []] + ([("--against", against)] if against else []):
        if m not in known:
            raise DDBenchError(f"{what} {m!r} has no results in this selection; "
                               f"valid: {', '.join(known) or 'none'}")
    if exact:
        tables = report.restrict(tables, exact)
    return report.analyse(tables, against=against, lrs_weight=weights[0], ars_weight=weights[1])


def _open_store(path: str) -> Store:
    """The store read-only: reading changes nothing, and read-only stores can be read
    (anything but a ddbench store is refused with one line, untouched)."""
    if not path.strip():
        raise DDBenchError("--store is empty; give the path of a ddbench result store")
    return Store(Path(path), readonly=True)


def _selection(func):
    for opt in reversed([
        click.option("--store", default=str(D.store), show_default=True, help="SQLite result store."),
        click.option("--run", "run_id", default=None, help="Only the cells of this run (id or prefix)."),
        click.option("--datasets", default=None, help="Comma list of datasets to keep."),
        click.option("--methods", default=None,
                     help="Comma list of methods to keep (a name keeps its swept variants)."),
        click.option("--ipc", default=None, help="Comma list of IPC values to keep."),
        click.option("--models", default=None, help="Comma list of evaluation models to keep."),
        click.option("--conditions", default=None, help="Comma list of data conditions to keep."),
    ]):
        func = opt(func)
    return func


def _filters(run_id, datasets, methods, ipc, models, conditions) -> results.Filters:
    def split(v, what):
        return split_list(v, what) if v else None
    if run_id is not None and not run_id.strip():  # no run filter is no --run, not --run ""
        raise DDBenchError("--run is empty; give a run id or a unique prefix of one")
    return results.Filters(run=run_id, datasets=split(datasets, "--datasets"), methods=split(methods, "--methods"),
                           ipcs=split(ipc, "--ipc"), models=split(models, "--models"),
                           conditions=split(conditions, "--conditions"))


def _write(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    from ddbench.storage.atomic import write_atomic

    try:
        write_atomic(Path(output), text)
    except OSError as exc:
        raise DDBenchError(f"cannot write {output!r}: {exc.strerror}") from None
    click.echo(f"wrote {output}", err=True)


@cli.command("report")
@_selection
@click.option("--format", "fmt", default="text", show_default=True, type=click.Choice(list(report.RENDERERS)),
              help="Output format.")
@click.option("--output", "-o", default=None, help="Write to this file instead of the terminal.")
@click.option("--against", default=None, help="Test every method against this one only (fewer tests).")
@click.option("--cost", is_flag=True, help="Add the distillation cost table (seconds/iteration, peak memory).")
@click.option("--plots", "plots_dir", default=None, metavar="DIR",
              help="Also write every figure (PNG and PDF) and an index.md/index.html to DIR.")
@click.option("--lrs-weight", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="DD-Ranking's w: LRS weighs IOR by w and HLR by 1 - w.")
@click.option("--ars-weight", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="DD-Ranking's gamma: ARS weighs the gain with augmentation by it, without by 1 - it.")
def report_cmd(store, run_id, datasets, methods, ipc, models, conditions, fmt, output, against, cost,
               plots_dir, lrs_weight, ars_weight):
    """Tables and significance tests rebuilt from the store, filtered."""
    st = _open_store(store)
    try:
        reg = registry()
        late = reg.late_params()
        an = _analysis(st, _filters(run_id, datasets, methods, ipc, models, conditions), reg, against=against,
                       weights=(lrs_weight, ars_weight))
        text = report.RENDERERS[fmt](an)
        if fmt == "text":
            text += "\n\n" + report.significance_summary(an, limit=None)
        if cost:
            table = cost_table(results.synsets(st, an.tables), late,
                               tablefmt="github" if fmt == "markdown" else "simple")
            text += "\n\ndistillation cost\n" + (table or "(no iterative method in the selection)") + "\n"
        _write(text, output)
        if plots_dir:
            from ddbench.analysis import plots

            figs = plots.write_all(an, st, Path(plots_dir))
            click.echo(f"wrote {len(figs)} figure(s) and {Path(plots_dir) / 'index.html'}", err=True)
    finally:
        st.close()


@cli.command("compare")
@click.argument("method_a")
@click.argument("method_b")
@_selection
@click.option("--output", "-o", default=None, help="Write to this file instead of the terminal.")
def compare_cmd(method_a, method_b, store, run_id, datasets, methods, ipc, models, conditions, output):
    """METHOD_A against METHOD_B in every cell where both have results (exact labels as the
    report shows them, e.g. 'dm+mim[lambda=0.4]')."""
    st = _open_store(store)
    try:
        an = _analysis(st, _filters(run_id, datasets, methods, ipc, models, conditions), registry(),
                       exact=[method_a, method_b])
    finally:
        st.close()
    _write(report.compare_text(an, method_a, method_b), output)


@cli.command("check")
@click.argument("baseline", type=click.Path(dir_okay=False))
@_selection
@click.option("--tolerance", type=click.FloatRange(min=0), default=None, metavar="PP",
              help="Allowed shortfall in percentage points [default: the baseline's, else 1].")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Significance level of the one-sided test (Holm over cells).")
@click.option("--strict", is_flag=True, help="Also fail on cells missing on either side and untestable ones.")
@click.option("--update", is_flag=True,
              help="Rewrite the BASELINE (.json) from the selected results instead of checking.")
@click.option("--merge", is_flag=True,
              help="With --update: keep the BASELINE's cells and unit values that the selection lacks "
                   "(a baseline gathered over several runs; same protocol only).")
@click.option("--dataset-as", "aliases", multiple=True, metavar="SPEC=NAME",
              help="Compare our dataset SPEC as the baseline's NAME, e.g. imagefolder:data/cifar10=cifar10 "
                   "(a local copy of a published dataset). Repeatable.")
def check_cmd(baseline, store, run_id, datasets, methods, ipc, models, conditions, tolerance, alpha, strict,
              update, merge, aliases):
    """Check stored results against BASELINE cell by cell: exit 1 on a regression beyond the
    tolerance (one-sided test using both sides' spread and n), 0 otherwise. BASELINE is an own
    baseline (.json, from --update) or a table of published numbers (.csv)."""
    from ddbench.analysis import baselines
    from ddbench.analysis import check as checkmod

    path = Path(baseline)
    if merge and not update:
        raise DDBenchError("--merge only goes with --update (it says how to rewrite the baseline)")
    if update and path.suffix != ".json":
        raise DDBenchError(f"--update writes own baselines (.json); {baseline!r} is not one "
                           "(published tables are edited by hand, never rewritten from a run)")
    st = _open_store(store)
    try:
        filters = _filters(run_id, datasets, methods, ipc, models, conditions)
        rows = _renamed(results.load_rows(st, filters), aliases)
        reg = registry()
        tables = results.group(rows, reg.late_params(), specs=reg.protocol_specs())
        if update:
            old = baselines.load(path) if path.exists() else None
            runs = st.runs({r.run_id for r in rows})
            new, summary = checkmod.build(tables, rows, runs, old, path, tolerance, merge)
            _write(baselines.dump(new), str(path))
            click.echo(summary.line(path))
            return
        base = baselines.load(path)
        res = checkmod.check(base, tables, filters, tolerance=tolerance, alpha=alpha)
    finally:
        st.close()
    click.echo(checkmod.render(res, strict), nl=False)
    if res.failed(strict):
        sys.exit(1)


def _renamed(rows, aliases: tuple[str, ...]):
    """Rows with their dataset renamed by ``--dataset-as SPEC=NAME`` (nothing stored changes)."""
    names = {}
    for item in aliases:
        spec, sep, name = item.rpartition("=")
        if not sep or not spec.strip() or not name.strip():
            raise DDBenchError(f"malformed --dataset-as {item!r}: expected SPEC=NAME, e.g. "
                               "imagefolder:data/cifar10=cifar10")
        names[spec.strip()] = name.strip()
    stored = {r.dataset for r in rows}
    for spec in names:
        if spec not in stored:
            raise DDBenchError(f"--dataset-as {spec!r}: no results of that dataset in the selection; "
                               f"valid: {', '.join(sorted(stored)) or 'none'}")
    return [dataclasses.replace(r, dataset=names.get(r.dataset, r.dataset)) for r in rows]
