"""``ddbench bench``: seconds per iteration and peak memory of each method and setting."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ddbench.cli.base import COMPILE_OPTION, cli
from ddbench.errors import DDBenchError


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
