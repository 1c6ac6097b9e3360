"""One run as a self-describing folder, and such folders merged into another store.

A reader of a paper, or a colleague, should be able to check and reuse a run without the
store that made it: ``export_run`` writes its rows (as stored), the report's statistics,
its synthetic sets as ``.safetensors`` that ``--methods file:`` evaluates anywhere (they
declare their space), a card per set and a README. ``import_folder``
(``ddbench.storage.importing``, importable from here too) merges such a folder under the
store's own rules and a fresh run's: rows keep their keys, every row, key, reference and
file is checked first, a conflict with a stored row refuses the whole import, and nothing
stored is replaced or duplicated.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from ddbench.errors import DDBenchError
from ddbench.storage.atomic import content_hash
from ddbench.storage.importing import FORMAT, Export, import_folder, read_folder
from ddbench.storage.records import SynsetRow
from ddbench.storage.store import Store
from ddbench.version import __version__

__all__ = ["Export", "FORMAT", "export_run", "import_folder", "read_folder"]


# --------------------------------------------------------------------------- export


def export_run(store: Store, prefix: str, out: Path, statistics: Callable[[str], dict]) -> Export:
    """Write run ``prefix``'s folder to ``out`` (absent or empty) atomically: it is built
    beside ``out`` and renamed, so ``out`` is never half-written. ``statistics(run_id)`` is
    the report of the run as JSON (``ddbench.analysis.report.run_statistics``): storage
    writes what analysis computed and never imports it."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DDBenchError(f"{out} exists and is not an empty folder; choose another")
    run_id = store.resolve_run(prefix, "run")
    cells = store.run_cell_keys(run_id)
    rows = sorted(store.results(cells), key=lambda r: r.cell_key)
    keys = sorted({r.distill_key for r in rows if r.distill_key})
    synsets = [s for s in map(store.synset, keys) if s is not None]
    exp = Export(store.runs([run_id])[0], sorted(cells), rows, synsets,
                 {s.distill_key: store.trace(s.distill_key) for s in synsets}, {})
    summary = statistics(run_id)
    tmp = out.parent / f"{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
        for s in synsets:
            exp.files.update(_write_set(store, s, exp, tmp))
        doc = {"format": FORMAT, "ddbench": __version__, "exported": time.time(),
               "run": exp.run.as_dict(), "cells": exp.cells, "results": [r.as_dict() for r in rows],
               "synsets": [s.as_dict() for s in synsets], "traces": exp.traces, "files": exp.files,
               "statistics": summary}
        (tmp / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        (tmp / "README.md").write_text(_readme(exp))
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise DDBenchError(f"cannot write {out}: {exc.strerror or exc}") from None
        raise
    return exp


def _write_set(store: Store, s: SynsetRow, exp: Export, folder: Path) -> dict[str, str]:
    """``sets/<key>``: the stored set with an ``lr`` tensor and metadata saying what it is
    (the stored metadata kept, so the store's own loader reads it too), its grid and card."""
    src = store.path.parent / s.artifact if s.artifact else None
    if not (s.ok and src and src.is_file()):
        return {}
    sets = folder / "sets"
    sets.mkdir(exist_ok=True)
    tensors = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata() or {}
    lr = json.loads(meta.get("lr", "null"))
    if lr is not None:
        tensors["lr"] = torch.tensor(float(lr))
    info = json.loads(meta.get("info", "{}"))
    meta.update(method=s.method or "", params=s.params or "{}", dataset=s.dataset or "",
                conditions=s.conditions or "clean", ipc=json.dumps(s.ipc), seed=json.dumps(s.seed),
                **{k: json.dumps(info.get(k)) for k in ("classes", "mean", "std")},
                space="normalized", distill_key=s.distill_key)
    # bytes written by Path (umask permissions): save_file would make a shared file 0600
    (sets / f"{s.distill_key}.safetensors").write_bytes(save(tensors, metadata=meta))
    grid = store.path.parent / s.grid if s.grid else None
    has_grid = bool(grid and grid.is_file())
    if has_grid:
        shutil.copyfile(grid, sets / f"{s.distill_key}.png")
    (sets / f"{s.distill_key}.md").write_text(_card(s, exp, info.get("classes"), has_grid))
    return {f"sets/{p.name}": content_hash(p) for p in sorted(sets.glob(f"{s.distill_key}.*"))}


def _card(s: SynsetRow, exp: Export, classes, has_grid: bool) -> str:
    accs = defaultdict(list)
    for r in exp.results:
        if r.distill_key == s.distill_key and r.ok:
            accs[(f"{r.protocol} #{(r.protocol_hash or '')[:8]}", r.model)].append(r.accuracy)
    lines = ["| protocol | model | accuracy % (mean ± std) | n |", "| --- | --- | --- | --- |"]
    for (protocol, model), values in sorted(accs.items()):
        x = np.asarray(values, dtype=float)
        spread = f" ± {100 * x.std(ddof=1):.1f}" if len(x) > 1 else ""
        lines.append(f"| {protocol} | {model} | {100 * x.mean():.1f}{spread} | {len(x)} |")
    cond = "" if s.conditions in (None, "clean") else f" --conditions {s.conditions}"
    grid = f"\n![images](./{s.distill_key}.png)\n" if has_grid else ""
    return (f"# {s.method} on {s.dataset} [{s.conditions}], IPC {s.ipc}, seed {s.seed}\n\n"
            f"- distill key: `{s.distill_key}`\n- parameters: `{s.params}`\n"
            f"- classes: {', '.join(map(str, classes)) if classes else s.num_classes}\n"
            f"- run `{exp.run.run_id}`: `{exp.run.command}`\n\n"
            f"Accuracy of networks trained on this set (that run):\n\n" + "\n".join(lines) + "\n" + grid +
            "\nEvaluate it elsewhere (images in the dataset's normalised space, declared in the file):\n\n"
            f"```bash\nddbench run --methods file:sets/{s.distill_key}.safetensors --datasets {s.dataset}{cond}\n```\n")


def _readme(exp: Export) -> str:
    run = exp.run
    sets = [s for s in exp.synsets if f"sets/{s.distill_key}.safetensors" in exp.files]
    rows = [f"| [{s.distill_key}](sets/{s.distill_key}.md) | {s.method} | {s.dataset} [{s.conditions}] "
            f"| {s.ipc} | {s.seed} |" for s in sets]
    return (f"# ddbench run {run.run_id}\n\n`{run.command}`\n\npreset {run.preset}, status {run.status}, "
            f"git {run.git_rev}, versions `{run.versions}`\n\n"
            f"- `results.json` ({FORMAT}): the run, its {len(exp.cells)} cell(s), {len(exp.results)} result "
            f"row(s), {len(exp.synsets)} synthetic-set row(s), their traces, the sha256 of every file here, "
            "and the statistics of `ddbench report --format json --run "
            f"{run.run_id}`\n- `sets/`: each synthetic set as `.safetensors` (`images`, `labels`, optional "
            "`soft_labels`, `lr`; metadata says what it is), its image grid (`.png`) and a card (`.md`)\n\n"
            "| set | method | dataset | IPC | seed |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows) +
            "\n\nMerge into a store: `ddbench import THIS_FOLDER --store PATH`; evaluate a set: "
            "`ddbench run --methods file:sets/KEY.safetensors --datasets DATASET`.\n")
