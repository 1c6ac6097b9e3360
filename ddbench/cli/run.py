"""``ddbench run`` (the sweep, its dry run) and ``ddbench experts``."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click
from tabulate import tabulate

from ddbench.analysis import report, results
from ddbench.analysis.cost_table import cost_table
from ddbench.cli.base import (
    COMPILE_OPTION,
    CONDITIONS_OPTION,
    DATA_ROOT_OPTION,
    DATASETS_OPTION,
    DEVICE_OPTION,
    DOWNLOAD_OPTION,
    PRESET_OPTION,
    SET_OPTION,
    D,
    cli,
    registry,
)
from ddbench.data.conditions import dataset_label
from ddbench.errors import DDBenchError
from ddbench.plan import RunOptions, config, parse_int_list, prepare, split_list
from ddbench.runner import RunSummary, build_experts, enable_trackers, run
from ddbench.storage.store import stored_cells


@cli.command("run")
@click.option("--methods", default=",".join(D.methods), show_default=True,
              help="Comma list of method specs base[+objective...], or file:PATH for a released set.")
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
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=D.checkpoint_every, show_default=True,
              metavar="N", help="Checkpoint a distillation every N iterations (0: by time only); "
                                "the same command resumes it (checkpoints/ beside the store).")
@click.option("--checkpoint-minutes", type=click.FloatRange(min=0), default=D.checkpoint_minutes,
              show_default=True, metavar="M", help="Checkpoint every M minutes of wall time (0: by count only).")
@click.option("--scores", is_flag=True, help="Add the cells DD-Ranking's LRS and ARS need (random, full, hard "
              "labels, with and without augmentation); `ddbench report` shows the scores.")
@click.option("--config", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="A sweep file (YAML or TOML) holding any of these options; the command line wins.")
@click.option("--sweep", default=None, metavar="NAME", help="The named sweep of the --config file to run.")
@click.option("--print-config", is_flag=True, help="Print the effective configuration (YAML) and exit.")
@click.option("--dry-run", is_flag=True, help="Print the plan and what is stored; run nothing.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--track", default="", metavar="NAME[,NAME]",
              help="Experiment trackers: mlflow (pip install 'ddbench[mlflow]'), wandb ('ddbench[wandb]').")
@click.option("--track-uri", default=None, metavar="URI",
              help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or mlruns/ beside the store].")
@click.pass_context
def run_cmd(ctx, **params):
    """Run the cross-product methods × datasets × IPC × models × seeds × sweeps.

    Exit status 0 when every cell of the run is stored ok, 1 when any failed (what
    succeeded is stored; the failures are listed), 2 for bad input (nothing written)."""
    reg = registry()
    p = _with_config(ctx, params, reg)
    if not str(p["store"]).strip():
        raise DDBenchError("--store is empty; give the path of a ddbench result store")
    enable_trackers(reg, p["track"], p["store"], p["track_uri"])
    lists = {name: parse(p[name]) for name, parse in LISTS.items()}
    options = RunOptions(
        methods=lists["methods"], datasets=lists["datasets"], ipcs=lists["ipc"], models=lists["models"],
        seeds=lists["seeds"], conditions=lists["conditions"], sets=p["sets"], preset=p["preset"],
        store=Path(p["store"]), data_root=Path(p["data_root"]) if p["data_root"] else None,
        download=p["download"], device=p["device"], executor=p["executor"], jobs=p["jobs"],
        address=p["address"], dry_run=p["dry_run"], progress=not p["quiet"],
        checkpoint_every=p["checkpoint_every"], checkpoint_minutes=p["checkpoint_minutes"], scores=p["scores"],
    )
    if p["print_config"]:
        extra = {k: p[k] for k in ("track", "track_uri") if p[k]}
        click.echo(config.dump({**options.as_config(), **extra}), nl=False)
        return
    dry_run = p["dry_run"]
    if dry_run:
        _dry_run(options, reg)
        return
    argv = (click.get_current_context().obj or {}).get("argv", sys.argv[1:])
    summary = run(options, reg, command=shlex.join(["ddbench", *argv]))
    late = reg.late_params()
    analysis = report.analyse(results.group(summary.rows, late, list(dict.fromkeys(j.label for j in summary.jobs)),
                                            specs=reg.protocol_specs()))
    click.echo(report.render_text(analysis))
    click.echo("\n" + report.significance_summary(analysis))
    cost = cost_table(summary.synsets, late)
    if cost:
        click.echo(f"\ndistillation cost (seconds per iteration, wall and CPU seconds of a distillation, peak memory of the process or GPU)\n{cost}")
    click.echo(f"\nstore: {options.store} (run {summary.run_id}; {summary.ran} evaluation(s) run, "
               f"{summary.skipped} already stored, {summary.failed} failed)")
    click.echo(f"synthetic sets and image grids: {Path(options.store).parent / 'artifacts'}")
    if summary.failures:
        _list_failures(summary)
        sys.exit(1)


#: the comma-list options and their parsers (also applied to a config file's values, so that
#: a bad one is reported with the file and key)
LISTS = {
    "methods": lambda v: split_list(v, "--methods"),
    "datasets": lambda v: split_list(v, "--datasets"),
    "ipc": lambda v: parse_int_list(v, "ipc", 1),
    "models": lambda v: split_list(v, "--models"),
    "seeds": lambda v: parse_int_list(v, "seed", 0),
    "conditions": lambda v: split_list(v, "--conditions"),
}


def _with_config(ctx: click.Context, params: dict, reg) -> dict:
    """``params`` with the ``--config`` file's values where the command line gave none, and
    ``--set`` items merged (the command line's win for the same NS.PARAM)."""
    out = dict(params, sets=list(params["sets"]))
    if not params["config"]:
        if params["sweep"]:
            raise DDBenchError("--sweep needs --config FILE")
        return out
    path = Path(params["config"])
    cfg = config.select(config.read(path), path, params["sweep"])
    defaults, file_sets = config.to_defaults(cfg, path, option_specs(ctx), reg)
    for name, value in defaults.items():
        if ctx.get_parameter_source(name) != click.core.ParameterSource.COMMANDLINE:
            if name in LISTS and value is not None:
                try:
                    LISTS[name](value)
                except DDBenchError as exc:
                    raise DDBenchError(f"config {path}: {name}: {exc}") from None
            out[name] = value
    out["sets"] = config.merge_sets(file_sets, out["sets"])
    return out


def option_specs(ctx: click.Context) -> dict[str, config.OptionSpec]:
    """The command's options as the sweep-file reader sees them: click's own conversion (its
    choices and ranges) with its refusal as a ``ValueError``."""

    def converter(opt: click.Option):
        def convert(text: str):
            try:
                return opt.type.convert(text, opt, ctx)
            except click.BadParameter as exc:
                raise ValueError(exc.message) from None
        return convert

    return {p.name: config.OptionSpec(p.is_flag, converter(p), takes_list=p.name in (*LISTS, "track"))
            for p in ctx.command.params if isinstance(p, click.Option)}


def _list_failures(summary: RunSummary) -> None:
    """One stderr line per failed job and error (its cells counted), then how to retry."""
    groups: dict[tuple, list] = {}
    for r in summary.failures:
        groups.setdefault((r.method, r.dataset, r.conditions, r.ipc_label, r.seed, r.error), []).append(r)
    for (method, dataset, conditions, ipc, seed, error), rows in groups.items():
        cells = ", ".join(f"{r.model} #{r.eval_index}" for r in rows)
        click.echo(f"failed: {method} {dataset_label(dataset, conditions or 'clean')} ipc={ipc} seed={seed} "
                   f"({cells}): {error}", err=True)
    click.echo(f"ddbench: {summary.failed} cell(s) failed; run the same command again to retry them", err=True)


def _dry_run(options: RunOptions, registry) -> None:
    prepared = prepare(options, registry)
    for w in prepared.warnings:
        click.echo(f"ddbench: warning: {w}", err=True)
    for n in prepared.notes:
        click.echo(f"ddbench: {n}", err=True)
    done = stored_cells(Path(options.store), (c.key for j in prepared.jobs for c in j.cells))  # read-only
    rows = []
    status = {buf.key: buf.status() for _, buf in prepared.buffers()}
    for job in prepared.jobs:
        n_done = sum(c.key in done for c in job.cells)
        models = sorted({c.model_label for c in job.cells})
        buf = prepared.experts.get(job.key)
        protocols = sorted({c.protocol.label for c in job.cells})
        rows.append([job.label, job.dataset_label, job.ipc_label, job.seed, ",".join(models),
                     ",".join(protocols), len(job.cells), n_done, status[buf.key] if buf else "-", job.key[:10]])
    click.echo(tabulate(rows, headers=["method", "dataset", "ipc", "seed", "models", "protocol", "cells",
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
    from ddbench.runtime.allocator import tune_allocator

    options = RunOptions(
        methods=split_list(methods, "--methods"), datasets=split_list(datasets, "--datasets"),
        ipcs=parse_int_list(ipc, "ipc", 1), seeds=[0], conditions=split_list(conditions, "--conditions"),
        sets=list(sets), preset=preset,
        data_root=Path(data_root) if data_root else None, download=download, device=device,
    )
    tune_allocator()
    prepared = prepare(options, registry())
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
