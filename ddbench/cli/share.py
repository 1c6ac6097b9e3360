"""``ddbench export`` and ``import``: one run as a shareable folder, merged into another store."""

from __future__ import annotations

from pathlib import Path

import click

from ddbench.analysis import report
from ddbench.cli.base import D, cli, registry
from ddbench.cli.results import _open_store
from ddbench.storage import share

STORE_OPTION = click.option("--store", default=str(D.store), show_default=True, help="SQLite result store.")


@cli.command("export")
@click.argument("run_id", metavar="RUN")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False))
@STORE_OPTION
def export_cmd(run_id, folder, store):
    """Write run RUN (id or unique prefix) to DIR: results.json (rows and statistics), its
    synthetic sets as .safetensors with image grids and cards, and a README."""
    st = _open_store(store)
    try:
        reg = registry()
        late, specs = reg.late_params(), reg.protocol_specs()
        exp = share.export_run(st, run_id, Path(folder), lambda rid: report.run_statistics(st, rid, late, specs))
    finally:
        st.close()
    files = sum(name.endswith(".safetensors") for name in exp.files)
    click.echo(f"exported run {exp.run.run_id}: {len(exp.results)} cell(s), {len(exp.synsets)} synthetic set(s) "
               f"({files} with a set file) to {folder}")


@cli.command("import")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False))
@STORE_OPTION
def import_cmd(folder, store):
    """Merge a folder written by `ddbench export` into the store: cells already stored are
    kept and skipped, nothing is duplicated; nothing is written unless the whole folder is valid."""
    added, sets, skipped = share.import_folder(Path(folder), Path(store))
    click.echo(f"imported {added} cell(s), {sets} synthetic set(s); {skipped} cell(s) already stored")
