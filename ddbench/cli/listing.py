"""``ddbench list``: every registered component with its origin and parameters, models'
sizes, the evaluation protocol's parameters, and the cached expert trajectories."""

from __future__ import annotations

from pathlib import Path

import click

from ddbench import params as P
from ddbench.cli.base import cli, registry
from ddbench.errors import DDBenchError
from ddbench.evaluation import protocol as proto
from ddbench.plan import data_root as data_root_of
from ddbench.plan import split_list
from ddbench.registry import KINDS


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice([*KINDS, "eval", "experts", "teachers"]))
@click.option("--data-root", default=None, help="Where to look for cached expert trajectories and teachers "
              "[default: $DDBENCH_DATA or datasets/].")
@click.option("--input", "inputs", default="1x28x28,3x32x32", show_default=True, metavar="CxHxW[,...]",
              help="Input shapes for the models' parameter counts.")
@click.option("--classes", default=10, show_default=True, type=click.IntRange(min=1),
              help="Number of classes for the models' parameter counts.")
def list_cmd(kind, data_root, inputs, classes):
    """Show every registered component with its origin and parameters (models: their
    parameter counts for the given inputs), the cached expert trajectories and teachers."""
    shapes = _parse_shapes(inputs)
    reg = registry()
    kinds = [kind] if kind else [*KINDS, "eval", "experts", "teachers"]
    for k in kinds:
        if k == "experts":
            _list_experts(data_root_of(Path(data_root) if data_root else None))
            continue
        if k == "teachers":
            _list_teachers(data_root_of(Path(data_root) if data_root else None))
            continue
        if k == "eval":
            click.echo("eval (the evaluation protocol; set with --set eval.PARAM=V, choose with "
                       "--set eval.protocol=NAME, 'method' = each method's paper's)")
            for e in reg.entries("protocols"):
                click.echo(f"  {e.name}: {e.cls.stored_name}/v{e.cls.version}  {e.cls.summary()}")
            click.echo(_params_line(proto.ProtocolParams, proto.PRESETS))
            continue
        click.echo(k)
        entries = reg.entries(k)
        if not entries:
            click.echo("  (none registered)")
        for e in entries:
            click.echo(f"  {e.name:<14} {e.cls.summary()}")
            click.echo(f"  {'':<14} from {e.origin}")
            line = _params_line(e.cls.Params, e.cls.presets)
            if line:
                click.echo(line)
            if k == "models":
                click.echo(_size_line(reg, e, shapes, classes))
            if k == "protocols":
                values = ", ".join(f"{n}={v}" for n, v in e.cls.values.items()) or "the defaults"
                click.echo(f"  {'':<14} stored as {e.cls.stored_name}/v{e.cls.version}; sets {values}")
        click.echo("")
    if reg.failures:
        click.echo("plugins that failed to load")
        for f in reg.failures:
            click.echo(f"  {f.name:<14} {f.package}: {f.error}")


def _list_experts(root: Path) -> None:
    from ddbench.evaluation.experts import cached_buffers

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


def _list_teachers(root: Path) -> None:
    from ddbench.evaluation.teacher import cached_teachers

    found = cached_teachers(root)
    click.echo(f"teachers (soft/teacher-label evaluation, cached under {root}; trained by the first run "
               "with --set eval.labels=soft|teacher)")
    if not found:
        click.echo("  (none cached)")
    for ident, path in found:
        d, r = ident["dataset"], ident["recipe"]
        aug = f"DSA {r['dsa_strategy']}" if r["dsa_strategy"] else "no augmentation"
        click.echo(f"  {d['dataset']} [{d['conditions']}] {r['model']}: {r['epochs']} epochs, lr {r['lr']}, "
                   f"{aug}  {path}")


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in split_list(text, "--input"):
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


def _size_line(reg, entry, shapes: list[tuple[int, int, int]], classes: int) -> str:
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
                net = reg.create("models", entry.name).build(c, classes, (h, w))
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
        if info.constraint:
            text += f" [{info.constraint}]"
        parts.append(text)
    return ("  " + " " * 15 + "params: " + ", ".join(parts)) if parts else ""
