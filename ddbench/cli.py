"""The ``ddbench`` command line (click). Errors are one line and exit code 2."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

from ddbench import __version__, report, results
from ddbench import params as P
from ddbench import plan as planmod
from ddbench import protocol as proto
from ddbench.errors import DDBenchError
from ddbench.registry import KINDS, load_registry
from ddbench.runner import RunOptions, prepare, run
from ddbench.runner import data_root as data_root_of
from ddbench.store import Store

D = RunOptions()
# options that `run` and `experts` share (experts are built for what the same run needs)
DATASETS_OPTION = click.option(
    "--datasets", default=",".join(D.datasets), show_default=True,
    help="Comma list of datasets (name or name:ARG, e.g. imagefolder:PATH).")
SET_OPTION = click.option(
    "--set", "sets", multiple=True, metavar="NAME.PARAM=V[,V...]",
    help="Set a parameter (a comma list makes a sweep axis). Repeatable.")
PRESET_OPTION = click.option(
    "--preset", default=D.preset, show_default=True, type=click.Choice(planmod.PRESETS),
    help="Iteration budgets: 'small' for a CPU, 'paper' for the reference budgets.")
DATA_ROOT_OPTION = click.option("--data-root", default=None, help="Data folder [default: $DDBENCH_DATA or datasets/].")
DOWNLOAD_OPTION = click.option("--download", is_flag=True, help="Download missing datasets into the data root.")
DEVICE_OPTION = click.option("--device", default=D.device, show_default=True, help="auto, cpu, cuda or cuda:N.")


def _set_compile(ctx, param, value):
    if value is not None:
        from ddbench.compiling import set_mode

        set_mode(value)
    return value


COMPILE_OPTION = click.option(
    "--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default=None, expose_value=False,
    callback=_set_compile,
    help="torch.compile the networks' first-order passes: auto = on for CPU and images of at least "
         "28x28 with a C++ compiler present [default: $DDBENCH_COMPILE or auto].")
CONDITIONS_OPTION = click.option(
    "--conditions", default=",".join(D.conditions), show_default=True,
    help="Comma list of data conditions: clean, zca (MTT's ZCA whitening), noise:RATE, "
         "noise-asym:RATE, imbalance:RATIO (training split only).")


def _registry():
    reg = load_registry()
    for f in reg.failures:
        click.echo(f"ddbench: warning: plugin {f.name!r} ({f.package}) failed to load: {f.error}", err=True)
    return reg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ddbench")
def cli():
    """Benchmark dataset distillation methods: run sweeps, store results, compare."""


@cli.command("run")
@click.option("--methods", default=",".join(D.methods), show_default=True,
              help="Comma list of method specs base[+objective...].")
@DATASETS_OPTION
@click.option("--ipc", default=",".join(map(str, D.ipcs)), show_default=True, help="Images per class, comma list.")
@click.option("--models", default=",".join(D.models), show_default=True, help="Evaluation models, comma list.")
@click.option("--seeds", default=",".join(map(str, D.seeds)), show_default=True, help="Distillation seeds, comma list.")
@CONDITIONS_OPTION
@SET_OPTION
@PRESET_OPTION
@click.option("--store", default=str(D.store), show_default=True, help="SQLite file for results.")
@DATA_ROOT_OPTION
@DOWNLOAD_OPTION
@DEVICE_OPTION
@COMPILE_OPTION
@click.option("--executor", default=D.executor, show_default=True,
              help="Executor plugin: local, ray (pip install 'ddbench[ray]'), slurm ('ddbench[slurm]').")
@click.option("--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Jobs at once: local worker processes [default: 1, in this process], "
                   "Ray tasks in flight, Slurm array parallelism [default: no limit].")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster address (ray executor) [default: start Ray on this machine].")
@click.option("--dry-run", is_flag=True, help="Print the plan and what is stored; run nothing.")
@click.option("--quiet", is_flag=True, help="No progress display.")
def run_cmd(methods, datasets, ipc, models, seeds, conditions, sets, preset, store, data_root, download,
            device, executor, jobs, address, dry_run, quiet):
    """Run the cross-product methods × datasets × IPC × models × seeds × sweeps."""
    options = RunOptions(
        methods=planmod.split_list(methods),
        datasets=planmod.split_list(datasets),
        ipcs=planmod.parse_int_list(ipc, "ipc", 1),
        models=planmod.split_list(models),
        seeds=planmod.parse_int_list(seeds, "seed", 0),
        conditions=planmod.split_list(conditions), sets=list(sets), preset=preset, store=Path(store),
        data_root=Path(data_root) if data_root else None, download=download,
        device=device, executor=executor, jobs=jobs, address=address, dry_run=dry_run,
        progress=not quiet,
    )
    for what, values in (("methods", options.methods), ("datasets", options.datasets),
                         ("models", options.models), ("conditions", options.conditions)):
        if not values:
            raise DDBenchError(f"--{what} is empty")
    registry = _registry()
    if dry_run:
        _dry_run(options, registry)
        return
    argv = (click.get_current_context().obj or {}).get("argv", sys.argv[1:])
    summary = run(options, registry, command=shlex.join(["ddbench", *argv]))
    analysis = report.analyse(results.group(summary.rows, list(dict.fromkeys(j.label for j in summary.jobs))))
    click.echo(report.render_text(analysis))
    click.echo("\n" + report.significance_summary(analysis))
    cost = report.cost_table(summary.synsets, root=Path(options.store).parent)
    if cost:
        click.echo(f"\ndistillation cost (seconds per iteration, wall and CPU seconds of a distillation, peak memory of the process or GPU)\n{cost}")
    click.echo(f"\nstore: {options.store} (run {summary.run_id}; {summary.ran} evaluation(s) run, "
               f"{summary.skipped} already stored, {summary.failed} failed)")
    click.echo(f"synthetic sets and image grids: {Path(options.store).parent / 'artifacts'}")
    if summary.failed:
        for r in summary.rows:
            if r["status"] != "ok":
                click.echo(f"failed: {r['method']} {r['dataset']} ipc={r['ipc']} seed={r['seed']} "
                           f"{r['model']} #{r['eval_index']}: {r['error']}", err=True)
                break


def _dry_run(options: RunOptions, registry) -> None:
    prepared = prepare(options, registry)
    for w in prepared.warnings:
        click.echo(f"ddbench: warning: {w}", err=True)
    done: set[str] = set()
    if Path(options.store).exists():
        st = Store(Path(options.store))
        done = st.done_cells(c.key for j in prepared.jobs for c in j.cells)
        st.close()
    from tabulate import tabulate

    rows = []
    status = {buf.key: buf.status() for _, buf in prepared.buffers()}
    for job in prepared.jobs:
        n_done = sum(c.key in done for c in job.cells)
        models = sorted({c.model_label for c in job.cells})
        buf = prepared.experts.get(job.key)
        rows.append([job.label, job.dataset_label, job.ipc_label, job.seed, ",".join(models),
                     len(job.cells), n_done, status[buf.key] if buf else "-", job.key[:10]])
    click.echo(tabulate(rows, headers=["method", "dataset", "ipc", "seed", "models", "cells",
                                       "stored", "experts", "key"], disable_numparse=True))
    total = sum(len(j.cells) for j in prepared.jobs)
    click.echo(f"\n{len(prepared.jobs)} synthetic set(s), {total} evaluation cell(s), "
               f"{len(done)} already stored, {total - len(done)} to run "
               f"(preset {options.preset}, device {prepared.device})")


@cli.command("experts")
@click.option("--methods", default="mtt", show_default=True,
              help="Methods whose expert trajectories to build (those that use experts).")
@DATASETS_OPTION
@click.option("--ipc", default=",".join(map(str, D.ipcs)), show_default=True,
              help="IPC values (the paper preset's settings can depend on them).")
@CONDITIONS_OPTION
@SET_OPTION
@PRESET_OPTION
@DATA_ROOT_OPTION
@DOWNLOAD_OPTION
@DEVICE_OPTION
@COMPILE_OPTION
@click.option("--dry-run", is_flag=True, help="Show which buffers are present and which to build.")
def experts_cmd(methods, datasets, ipc, conditions, sets, preset, data_root, download, device, dry_run):
    """Train (or show) the expert trajectories that `ddbench run` with the same options needs.

    Buffers are cached under the data root and shared by every run and method with the
    same recipe; `ddbench run` also builds missing ones on demand.
    """
    from ddbench.allocator import tune_allocator
    from ddbench.runner import build_experts

    options = RunOptions(
        methods=planmod.split_list(methods), datasets=planmod.split_list(datasets),
        ipcs=planmod.parse_int_list(ipc, "ipc", 1), seeds=[0], conditions=planmod.split_list(conditions),
        sets=list(sets), preset=preset,
        data_root=Path(data_root) if data_root else None, download=download, device=device,
    )
    tune_allocator()
    prepared = prepare(options, _registry())
    buffers = prepared.buffers()
    if not buffers:
        raise DDBenchError(f"none of the methods {', '.join(options.methods)} uses expert trajectories")
    for job, buf in buffers:
        r = buf.recipe
        head = (f"{job.dataset_label} {r.model} x{r.num_experts}, {r.epochs} epochs, lr {r.lr}: "
                f"{buf.status()}  {buf.folder}")
        click.echo(head)
        if not dry_run:
            start = time.perf_counter()
            def report(step, total, epochs=r.epochs, start=start):
                if step % epochs == 0:
                    click.echo(f"  expert {step // epochs}/{total // epochs} trained "
                               f"({time.perf_counter() - start:.0f} s)")

            trained = build_experts(prepared, job, report)
            click.echo(f"  trained {trained} expert(s) in {time.perf_counter() - start:.1f} s")


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice([*KINDS, "eval", "experts"]))
@click.option("--data-root", default=None, help="Where to look for cached expert trajectories "
              "[default: $DDBENCH_DATA or datasets/].")
@click.option("--input", "inputs", default="1x28x28,3x32x32", show_default=True, metavar="CxHxW[,...]",
              help="Input shapes for the models' parameter counts.")
@click.option("--classes", default=10, show_default=True, type=click.IntRange(min=1),
              help="Number of classes for the models' parameter counts.")
def list_cmd(kind, data_root, inputs, classes):
    """Show every registered component with its origin and parameters (models: their
    parameter counts for the given inputs), and the cached expert trajectories."""
    shapes = _parse_shapes(inputs)
    registry = _registry()
    kinds = [kind] if kind else [*KINDS, "eval", "experts"]
    for k in kinds:
        if k == "experts":
            _list_experts(data_root_of(Path(data_root) if data_root else None))
            continue
        if k == "eval":
            click.echo(f"eval (the protocol, {proto.NAME}/v{proto.VERSION}; set with --set eval.PARAM=V)")
            click.echo(_params_line(proto.ProtocolParams, proto.PRESETS))
            continue
        click.echo(k)
        entries = registry.entries(k)
        if not entries:
            click.echo("  (none registered)")
        for e in entries:
            click.echo(f"  {e.name:<14} {e.cls.summary()}")
            click.echo(f"  {'':<14} from {e.origin}")
            line = _params_line(e.cls.Params, e.cls.presets)
            if line:
                click.echo(line)
            if k == "models":
                click.echo(_size_line(e, shapes, classes))
        click.echo("")
    if registry.failures:
        click.echo("plugins that failed to load")
        for f in registry.failures:
            click.echo(f"  {f.name:<14} {f.package}: {f.error}")


def _list_experts(root: Path) -> None:
    from ddbench.experts import cached_buffers

    buffers = cached_buffers(root)
    click.echo(f"experts (trajectories cached under {root}; `ddbench experts --dry-run` shows "
               "what a run needs)")
    if not buffers:
        click.echo("  (none cached)")
    for ident, n, folder in buffers:
        d, r = ident["dataset"], ident["recipe"]
        subset = f", {r['images_per_class']} images/class" if r["images_per_class"] else ""
        click.echo(f"  {d['dataset']} [{d['conditions']}] {r['model']}: {n} expert(s), {r['epochs']} "
                   f"epochs, lr {r['lr']}{subset}  {folder}")


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in planmod.split_list(text):
        try:
            c, h, w = (int(v) for v in item.lower().split("x"))
            if min(c, h, w) < 1:
                raise ValueError
        except ValueError:
            raise DDBenchError(f"invalid --input {item!r}: expected CxHxW with positive integers, "
                               "e.g. 1x28x28,3x32x32") from None
        shapes.append((c, h, w))
    if not shapes:
        raise DDBenchError("--input is empty; expected CxHxW[,CxHxW...], e.g. 1x28x28,3x32x32")
    return shapes


def _size_line(entry, shapes: list[tuple[int, int, int]], classes: int) -> str:
    """Parameter counts of a model with its default parameters, built on the meta device
    (no memory, no initialisation cost)."""
    import torch

    pad = "  " + " " * 15
    if getattr(entry.cls, "argument", None):
        return f"{pad}size: depends on the architecture ({entry.name}:NAME)"
    counts = []
    for c, h, w in shapes:
        try:
            with torch.device("meta"):
                net = entry.cls(entry.cls.Params() if entry.cls.Params else None).build(c, classes, (h, w))
            counts.append(f"{c}x{h}x{w}: {sum(p.numel() for p in net.parameters()):,}")
        except Exception:  # a model that cannot take this input (ConvNet too deep for 8x8)
            counts.append(f"{c}x{h}x{w}: n/a")
    return f"{pad}size: {' | '.join(counts)} parameters ({classes} classes, default params)"


def _params_line(params_cls, presets) -> str:
    parts = []
    for info in P.fields(params_cls):
        text = f"{info.name}={info.default}"
        by_preset = [f"{p}: {v[info.name]}" for p, v in presets.items() if info.name in v]
        if by_preset:
            text += f" ({'; '.join(by_preset)})"
        if info.choices:
            text += " {" + "|".join(map(str, info.choices)) + "}"
        parts.append(text)
    return ("  " + " " * 15 + "params: " + ", ".join(parts)) if parts else ""


def _analysis(store: Store, filters: results.Filters, against=None, exact=None):
    tables = results.group(results.load_rows(store, filters))
    known = sorted({m for t in tables for m in t.methods})
    for what, m in [("method", m) for m in exact or []] + ([("--against", against)] if against else []):
        if m not in known:
            raise DDBenchError(f"{what} {m!r} has no results in this selection; "
                               f"valid: {', '.join(known) or 'none'}")
    if exact:
        tables = report.restrict(tables, exact)
    return report.analyse(tables, against=against)


def _open_store(path: str) -> Store:
    if not Path(path).is_file():
        raise DDBenchError(f"store {path!r} does not exist; run `ddbench run` first or pass --store")
    return Store(Path(path))


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
    def split(v):
        return planmod.split_list(v) if v else None
    return results.Filters(run=run_id, datasets=split(datasets), methods=split(methods), ipcs=split(ipc),
                           models=split(models), conditions=split(conditions))


def _write(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    from ddbench.data.cache import write_atomic

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
def report_cmd(store, run_id, datasets, methods, ipc, models, conditions, fmt, output, against, cost,
               plots_dir):
    """Tables and significance tests rebuilt from the store, filtered."""
    st = _open_store(store)
    try:
        an = _analysis(st, _filters(run_id, datasets, methods, ipc, models, conditions), against=against)
        text = report.RENDERERS[fmt](an)
        if fmt == "text":
            text += "\n\n" + report.significance_summary(an, limit=None)
        if cost:
            table = report.cost_table(results.synsets(st, an.tables), root=st.path.parent,
                                      tablefmt="github" if fmt == "markdown" else "simple")
            text += "\n\ndistillation cost\n" + (table or "(no iterative method in the selection)") + "\n"
        _write(text, output)
        if plots_dir:
            from ddbench import plots

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
        an = _analysis(st, _filters(run_id, datasets, methods, ipc, models, conditions),
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
def check_cmd(baseline, store, run_id, datasets, methods, ipc, models, conditions, tolerance, alpha, strict,
              update, merge):
    """Check stored results against BASELINE cell by cell: exit 1 on a regression beyond the
    tolerance (one-sided test using both sides' spread and n), 0 otherwise. BASELINE is an own
    baseline (.json, from --update) or a table of published numbers (.csv)."""
    from ddbench import baselines
    from ddbench import check as checkmod

    path = Path(baseline)
    if merge and not update:
        raise DDBenchError("--merge only goes with --update (it says how to rewrite the baseline)")
    if update and path.suffix != ".json":
        raise DDBenchError(f"--update writes own baselines (.json); {baseline!r} is not one "
                           "(published tables are edited by hand, never rewritten from a run)")
    st = _open_store(store)
    try:
        filters = _filters(run_id, datasets, methods, ipc, models, conditions)
        rows = results.load_rows(st, filters)
        tables = results.group(rows)
        if update:
            old = baselines.load(path) if path.exists() else None
            runs = st.runs({r["run_id"] for r in rows})
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


@cli.command("bench")
@click.option("--settings", "names", default=None, metavar="LIST",
              help="Comma-separated settings [default: all but mtt-ss30-full (about 13 GB)]; "
                   "see --list.")
@click.option("--list", "show", is_flag=True, help="List the settings and exit.")
@click.option("--data", default="random", show_default=True,
              help="'random' (CIFAR-10-shaped random tensors: no download) or a dataset spec.")
@click.option("--data-root", default="datasets", show_default=True, type=click.Path(file_okay=False))
@click.option("--iterations", type=click.IntRange(min=2), default=3, show_default=True,
              help="Iterations (epochs for experts) per setting; the first is a warm-up.")
@click.option("--device", default="cpu", show_default=True)
@COMPILE_OPTION
@click.option("--flops/--no-flops", default=True, show_default=True,
              help="Count the FLOPs of one extra, untimed iteration per setting (GFLOP/s columns).")
@click.option("--json", "json_out", default="bench.json", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the records (with the environment).")
def bench_cmd(names, show, data, data_root, iterations, device, flops, json_out):
    """Seconds per iteration and peak memory of each method and setting, each in a fresh
    process, beside the public reference implementations' figures."""
    import json

    from ddbench import bench

    if show:
        for s in bench.SETTINGS:
            ref = f"reference {s.ref_seconds} s, {s.ref_mem_gb} GB" if s.ref_seconds else "no reference figure"
            click.echo(f"  {s.name:15} {s.method or s.kind} ipc {s.ipc} {s.params or ''} ({ref})")
        return
    chosen = names.split(",") if names else bench.DEFAULT
    bad = [n for n in chosen if n not in bench.BY_NAME]
    if bad:
        raise DDBenchError(f"unknown bench setting {bad[0]!r}; choose from {', '.join(bench.BY_NAME)}")
    env = bench.environment(device)
    click.echo(f"ddbench bench on {data} ({device}, torch {env['torch']}, {env['cpus']} cpus, "
               f"{iterations} iterations each, the first a warm-up)", err=True)
    records = bench.run_all(chosen, data, data_root, iterations, device, echo=lambda m: click.echo(m, err=True),
                            count_flops=flops)
    env["gemm_gflops"] = bench.measure_gemm(device) if flops else None
    click.echo(bench.table(records, env["gemm_gflops"]))
    if env["gemm_gflops"]:
        click.echo(f"GFLOP/s: matmul and convolution FLOPs of one iteration (FlopCounterMode) over its "
                   f"seconds; of GEMM: share of this machine's dense fp32 matmul rate, "
                   f"{env['gemm_gflops']:.0f} GFLOP/s")
    Path(json_out).write_text(json.dumps({"environment": env, "data": data, "records": records}, indent=2))
    click.echo(f"records: {json_out}")
    if any("error" in r for r in records):
        sys.exit(1)


def main(argv=None) -> None:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        cli.main(args=argv, prog_name="ddbench", standalone_mode=False, obj={"argv": argv})
    except DDBenchError as exc:
        click.echo(f"ddbench: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("ddbench: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"ddbench: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("\nddbench: interrupted; finished cells are stored, run again to resume", err=True)
        sys.exit(130)
