"""One run as a self-describing folder, and such folders merged into another store.

A reader of a paper, or a colleague, should be able to check and reuse a run without the
store that made it: ``export_run`` writes its rows (as stored), the report's statistics,
its synthetic sets as ``.safetensors`` that ``--methods file:`` evaluates anywhere (they
declare their space), a card per set and a README. ``import_folder`` merges such a folder
under the store's own rules: rows keep their keys, nothing stored is replaced or
duplicated, and the whole folder is checked before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ddbench.errors import DDBenchError
from ddbench.storage.atomic import content_hash, temp_name
from ddbench.storage.records import Record, ResultRow, RunRow, SynsetRow
from ddbench.storage.store import Store
from ddbench.version import __version__

FORMAT = "ddbench-export/1"
#: row keys are hex digests; anything else could name a path outside the folder
KEY = re.compile(r"[0-9A-Za-z_-]{1,128}")
_PY = {"TEXT": (str,), "INTEGER": (int,), "REAL": (int, float)}
SET_FILES = ("safetensors", "png")


@dataclass
class Export:
    """A folder's rows, checked."""

    run: RunRow
    cells: list[str]
    results: list[ResultRow]
    synsets: list[SynsetRow]
    traces: dict[str, dict[str, list]]
    files: dict[str, str]  # relative path -> sha256


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


# --------------------------------------------------------------------------- import


def read_folder(folder: Path) -> Export:
    """The folder's rows, every field, key and file checked (one-line errors naming them)."""
    folder = Path(folder)
    path = folder / "results.json"
    if not path.is_file():
        raise DDBenchError(f"{path}: missing; {folder} is not a folder written by `ddbench export`")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DDBenchError(f"{path}: cannot be read as JSON ({exc})") from None

    def bad(where: str, msg: str) -> DDBenchError:
        return DDBenchError(f"{path}: {where}: {msg}")

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise bad("format", f"{found!r}; this ddbench reads {FORMAT!r}")
    for name, kind in (("run", dict), ("cells", list), ("results", list), ("synsets", list),
                       ("traces", dict), ("files", dict)):
        if not isinstance(doc.get(name), kind):
            raise bad(name, f"missing or not a JSON {'object' if kind is dict else 'array'}")
    if not all(isinstance(k, str) for k in doc["cells"]):
        raise bad("cells", "expected cell keys (strings)")
    exp = Export(_record(RunRow, doc["run"], "run", bad), doc["cells"],
                 [_record(ResultRow, r, f"results[{i}]", bad) for i, r in enumerate(doc["results"])],
                 [_record(SynsetRow, s, f"synsets[{i}]", bad) for i, s in enumerate(doc["synsets"])],
                 doc["traces"], doc["files"])
    for key, series in exp.traces.items():
        ok = isinstance(series, dict) and all(
            isinstance(pts, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)
                                          and isinstance(p[1], (int, float)) for p in pts)
            for pts in series.values())
        if not ok:
            raise bad(f"traces[{key!r}]", "expected {series: [[step, value], ...]}")
    names = {f"sets/{s.distill_key}.{ext}" for s in exp.synsets for ext in (*SET_FILES, "md")}
    for rel, sha in exp.files.items():
        if rel not in names:
            raise bad(f"files[{rel!r}]", "not a file of a synthetic set listed under synsets")
        if not (folder / rel).is_file():
            raise DDBenchError(f"{folder / rel}: missing (listed in {path} files)")
        if content_hash(folder / rel) != sha:
            raise DDBenchError(f"{folder / rel}: sha256 differs from {path} files[{rel!r}] (damaged or changed)")
        if rel.endswith(".safetensors"):
            _check_set(folder / rel)
    return exp


def _record(cls: type[Record], value, where: str, bad) -> Record:
    """A row from its JSON object: known columns typed as the store's (unknown ones, from a
    newer ddbench, ignored as the store ignores them)."""
    if not isinstance(value, dict):
        raise bad(where, "expected a JSON object")
    for col, sql in cls.sql_types().items():
        v = value.get(col)
        if v is not None and (isinstance(v, bool) or not isinstance(v, _PY[sql])):
            raise bad(f"{where}.{col}", f"expected {sql.lower()}, found {json.dumps(v)[:40]}")
    if not KEY.fullmatch(value.get(cls.primary) or ""):
        raise bad(f"{where}.{cls.primary}", f"{value.get(cls.primary)!r} is not a key")
    return cls(**{c: value.get(c) for c in cls.columns()})


def _check_set(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as f:
            missing = {"images", "labels"} - set(f.keys())
    except (SafetensorError, OSError) as exc:
        raise DDBenchError(f"{path}: cannot be read ({exc})") from None
    if missing:
        raise DDBenchError(f"{path}: no {' or '.join(sorted(missing))} tensor")


def import_folder(folder: Path, store_path: Path) -> tuple[int, int, int]:
    """Merge an exported folder into the store at ``store_path``: returns (cells added, sets
    added, cells skipped because stored). Nothing is written unless everything is valid;
    files land under their final names by rename, and are removed if the rows cannot be."""
    exp = read_folder(folder)
    store = Store(store_path)
    placed: list[Path] = []
    try:
        rows = []
        for s in exp.synsets:
            new = store.synset(s.distill_key) is None
            names = {}
            for ext in SET_FILES:
                rel = f"sets/{s.distill_key}.{ext}"
                target = store.artifacts_dir / f"{s.distill_key}.{ext}"
                names[ext] = str(target.relative_to(store.path.parent)) if rel in exp.files else None
                if new and names[ext]:
                    _copy(Path(folder) / rel, target)
                    placed.append(target)
            rows.append(SynsetRow(**{**s.as_dict(), "artifact": names["safetensors"], "grid": names["png"]}))
        added, skipped, sets = store.merge(exp.run, exp.cells, rows, exp.traces, exp.results)
    except BaseException:
        for p in placed:
            p.unlink(missing_ok=True)
        raise
    finally:
        store.close()
    return added, sets, skipped


def _copy(src: Path, target: Path) -> None:
    tmp = temp_name(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise DDBenchError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
