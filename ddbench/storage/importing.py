"""A folder written by ``ddbench export`` read back and merged into a store, as strictly as
a fresh run writes one: a store that took a bad row would break every later report, and a
store is never repaired by hand.

Every row is checked as the runner writes it (``rowcheck``), every key and reference
resolves (a result's set is in the folder or the store, each file is a set's), no symbolic
link is followed (an export holds its own files), and rows that conflict (one key,
different content) refuse the whole import with their list. Nothing is written before all
of it holds, so a refused import leaves the store byte for byte as it was.

Limits: ``results.json`` is read only up to 256 MiB (``MAX_BYTES``: an export of a large
sweep is a few MiB) and nested at most ``rowcheck.MAX_DEPTH`` levels; integers are SQLite's
(signed 64 bits).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ddbench.errors import DDBenchError
from ddbench.storage import rowcheck, storefile
from ddbench.storage.atomic import content_hash, temp_name
from ddbench.storage.records import Record, ResultRow, RunRow, SynsetRow
from ddbench.storage.store import Store, check_writable

FORMAT = "ddbench-export/1"
SET_FILES = ("safetensors", "png")
MAX_BYTES = 256 * 2**20
SHA256 = re.compile(r"[0-9a-f]{64}")
PNG = b"\x89PNG\r\n\x1a\n"
#: what a stored row of the same key must agree on: what was computed and where (a key
#: computed twice may differ in its run, times, device and, within one method, its label)
SAME = {ResultRow: ("distill_key", "dataset", "conditions", "ipc", "seed", "model_params", "eval_index",
                    "protocol_hash"),
        SynsetRow: ("dataset", "conditions", "ipc", "seed"),
        RunRow: ("started", "command", "preset", "config")}
#: a result's columns that its synthetic set's row holds too (the runner writes both from one job)
OF_SET = ("dataset", "conditions", "ipc", "seed")
#: conflicts named in the error; the rest are counted
SHOWN = 5


@dataclass
class Export:
    """A folder's rows, checked."""

    run: RunRow
    cells: list[str]
    results: list[ResultRow]
    synsets: list[SynsetRow]
    traces: dict[str, dict[str, list]]
    files: dict[str, str]  # relative path -> sha256


@dataclass
class Stored:
    """The store's rows under the folder's keys (empty when there is no store yet)."""

    results: dict[str, ResultRow] = field(default_factory=dict)
    synsets: dict[str, SynsetRow] = field(default_factory=dict)
    runs: dict[str, RunRow] = field(default_factory=dict)


def read_folder(folder: Path) -> Export:
    """The folder's rows, every field, key and file checked (one-line errors naming them);
    what needs the store (conflicts, sets stored there) is ``import_folder``'s."""
    folder = Path(folder)
    path = folder / "results.json"
    doc = rowcheck.load_json(_read_text(path, folder), lambda msg: DDBenchError(f"{path}: {msg}"))

    def bad(where: str, msg: str) -> DDBenchError:
        return DDBenchError(f"{path}: {where}: {msg}")

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise bad("format", f"{_short(found)}; this ddbench reads {FORMAT!r}")
    for name, kind in (("run", dict), ("cells", list), ("results", list), ("synsets", list),
                       ("traces", dict), ("files", dict)):
        if not isinstance(doc.get(name), kind):
            raise bad(name, f"missing or not a JSON {'object' if kind is dict else 'array'}")
    for i, k in enumerate(doc["cells"]):
        if not (isinstance(k, str) and rowcheck.KEYS["cell_key"].fullmatch(k)):
            raise bad(f"cells[{i}]", f"{k!r:.60} is not a key; expected 20 hex digits")
    exp = Export(rowcheck.record(RunRow, doc["run"], "run", bad), doc["cells"],
                 [rowcheck.record(ResultRow, r, f"results[{i}]", bad) for i, r in enumerate(doc["results"])],
                 [rowcheck.record(SynsetRow, s, f"synsets[{i}]", bad) for i, s in enumerate(doc["synsets"])],
                 doc["traces"], doc["files"])
    cells = set(exp.cells)
    for i, r in enumerate(exp.results):
        rowcheck.check_cell_key(r, f"results[{i}]", bad)
        if r.cell_key not in cells:
            raise bad(f"results[{i}].cell_key", f"{r.cell_key!r} is not among cells")
    keys = {s.distill_key for s in exp.synsets}
    for key, series in exp.traces.items():
        if key not in keys:
            raise bad(f"traces[{key[:60]!r}]", "names no synthetic set listed under synsets")
        rowcheck.trace(key, series, bad)
    names = {f"sets/{k}.{ext}" for k in keys for ext in (*SET_FILES, "md")}
    for rel, sha in exp.files.items():
        if rel not in names:
            raise bad(f"files[{rel[:80]!r}]", "not a file of a synthetic set listed under synsets")
        if not (isinstance(sha, str) and SHA256.fullmatch(sha)):
            raise bad(f"files[{rel!r}]", f"expected a sha256 (64 hex digits), found {sha!r:.70}")
    for rel, sha in exp.files.items():
        _check_file(folder, rel, sha, path)
    return exp


def _read_text(path: Path, folder: Path) -> str:
    """``results.json`` as text: a regular file (no link), at most ``MAX_BYTES``, UTF-8."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DDBenchError(f"{path}: missing; {folder} is not a folder written by `ddbench export`") from None
    except OSError as exc:
        raise DDBenchError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    _regular(path, mode)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_BYTES + 1) if size <= MAX_BYTES else b""
    except OSError as exc:
        raise DDBenchError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size > MAX_BYTES or len(data) > MAX_BYTES:
        raise DDBenchError(f"{path}: {max(size, len(data))} bytes; an export's results.json is at most "
                           f"{MAX_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DDBenchError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _regular(path: Path, mode: int, kind: str = "file") -> None:
    if stat.S_ISLNK(mode):
        raise DDBenchError(f"{path}: a symbolic link; an export folder holds its own files and none is followed")
    if not (stat.S_ISDIR(mode) if kind == "folder" else stat.S_ISREG(mode)):
        raise DDBenchError(f"{path}: not a {'folder' if kind == 'folder' else 'regular file'}")


def _check_file(folder: Path, rel: str, sha: str, listed_in: Path) -> None:
    """A listed file: inside the folder without a link on the way, its sha256 as listed,
    and what its name says (a set with its key, a PNG image)."""
    path = folder / rel
    try:
        _regular(folder / "sets", os.lstat(folder / "sets").st_mode, "folder")
        _regular(path, os.lstat(path).st_mode)
        if content_hash(path) != sha:
            raise DDBenchError(f"{path}: sha256 differs from {listed_in} files[{rel!r}] (damaged or changed)")
        if path.suffix == ".png":
            with open(path, "rb") as f:
                if f.read(len(PNG)) != PNG:
                    raise DDBenchError(f"{path}: not a PNG image")
        elif path.suffix == ".safetensors":
            _check_set(path)
    except FileNotFoundError:
        raise DDBenchError(f"{path}: missing (listed in {listed_in} files)") from None
    except OSError as exc:
        raise DDBenchError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _check_set(path: Path) -> None:
    """A set file readable as the store's loader reads it, declaring the key it is listed under."""
    try:
        with safe_open(str(path), framework="pt") as f:
            missing = {"images", "labels"} - set(f.keys())
            declared = (f.metadata() or {}).get("distill_key", path.stem)
    except (SafetensorError, OSError) as exc:
        raise DDBenchError(f"{path}: cannot be read ({' '.join(str(exc).split())})") from None
    if missing:
        raise DDBenchError(f"{path}: no {' or '.join(sorted(missing))} tensor")
    if declared != path.stem:
        raise DDBenchError(f"{path}: declares distill_key {declared[:60]!r}, not the key it is listed under")


# --------------------------------------------------------------------------- merge


def import_folder(folder: Path, store_path: Path) -> tuple[int, int, int]:
    """Merge an exported folder into the store at ``store_path``: returns (cells added, sets
    added, cells skipped because stored). Nothing is written unless everything is valid;
    files land under their final names by rename, and are removed if the rows cannot be."""
    exp = read_folder(folder)
    path = Path(folder) / "results.json"
    store_path = Path(store_path)
    check_writable(store_path)
    results = _distinct(exp.results, "results", path)
    synsets = _distinct(exp.synsets, "synsets", path)
    stored = _stored(store_path, exp)
    _check_sets(exp, stored, path)
    _refuse_conflicts(exp, stored, path)
    store = Store(store_path)
    placed: list[Path] = []
    made_dir = not store.artifacts_dir.exists()
    try:
        rows = []
        for s in synsets:
            new = store.synset(s.distill_key) is None
            names = {}
            for ext in SET_FILES:
                rel = f"sets/{s.distill_key}.{ext}"
                target = store.artifacts_dir / f"{s.distill_key}.{ext}"
                names[ext] = str(target.relative_to(store.path.parent)) if rel in exp.files else None
                if new and names[ext]:
                    _copy(Path(folder) / rel, target, exp.files[rel])
                    placed.append(target)
            rows.append(SynsetRow(**{**s.as_dict(), "artifact": names["safetensors"], "grid": names["png"]}))
        added, skipped, sets = store.merge(exp.run, exp.cells, rows, exp.traces, results)
    except BaseException:
        for p in placed:
            p.unlink(missing_ok=True)
        if made_dir and store.artifacts_dir.is_dir() and not any(store.artifacts_dir.iterdir()):
            store.artifacts_dir.rmdir()
        raise
    finally:
        store.close()
    return added, sets, skipped


def _distinct(rows: list[Record], name: str, path: Path) -> list[Record]:
    """``rows`` without exact repeats; two rows of one key that differ in anything refuse
    the import (an export holds one row per key)."""
    first: dict[str, int] = {}
    out, conflicts = [], []
    for i, r in enumerate(rows):
        key = getattr(r, r.primary)
        if key not in first:
            first[key] = i
            out.append(r)
            continue
        j = first[key]
        diffs = rowcheck.differences(r, rows[j], r.columns())
        if diffs:
            conflicts.append(f"{name}[{i}] ({r.primary} {key!r}): "
                             + ", ".join(f"{c} {_short(a)} vs {_short(b)}" for c, a, b in diffs) + f" in {name}[{j}]")
    _refuse(conflicts, "within the folder", path)
    return out


def _stored(store_path: Path, exp: Export) -> Stored:
    """The store's rows under the folder's keys, read as a reader reads them: nothing is
    created, migrated or written (a refused import leaves the store as it was)."""
    out = Stored()
    if storefile.inspect(store_path, write=True) != storefile.STORE:
        return out  # nothing stored yet
    store = Store(store_path, readonly=True)
    try:
        out.results = {r.cell_key: r for r in store.results(sorted({r.cell_key for r in exp.results}))}
        keys = {s.distill_key for s in exp.synsets} | {r.distill_key for r in exp.results}
        out.synsets = {k: s for k in sorted(keys) if (s := store.synset(k)) is not None}
        out.runs = {r.run_id: r for r in store.runs([exp.run.run_id])}
    finally:
        store.close()
    return out


def _check_sets(exp: Export, stored: Stored, path: Path) -> None:
    """Each result's set is in the folder or the store, and agrees with the result on what
    both rows hold."""
    here = {}
    for j, s in enumerate(exp.synsets):
        here.setdefault(s.distill_key, (s, f"synsets[{j}]"))
    for i, r in enumerate(exp.results):
        found = here.get(r.distill_key)
        if found is None and r.distill_key in stored.synsets:
            found = stored.synsets[r.distill_key], "stored"
        if found is None:
            raise DDBenchError(f"{path}: results[{i}].distill_key: {r.distill_key!r} names no synthetic set "
                               "in the folder or in the store")
        s, where = found
        diffs = rowcheck.differences(r, s, OF_SET)
        if diffs:
            c, a, b = diffs[0]
            raise DDBenchError(f"{path}: results[{i}].{c}: {a!r}, but its synthetic set {r.distill_key!r} "
                               f"({where}) has {b!r}")


def _refuse_conflicts(exp: Export, stored: Stored, path: Path) -> None:
    """Rows whose key is stored with other content (what was computed, or an ``ok`` row's
    accuracy) refuse the import: the store keeps one row per key and an import replaces none."""
    conflicts = []
    pairs = [("run", exp.run, stored.runs.get(exp.run.run_id))]
    pairs += [(f"results[{i}]", r, stored.results.get(r.cell_key)) for i, r in enumerate(exp.results)]
    pairs += [(f"synsets[{i}]", s, stored.synsets.get(s.distill_key)) for i, s in enumerate(exp.synsets)]
    for where, row, old in pairs:
        if old is None:
            continue
        columns = SAME[type(row)] + (("accuracy",) if isinstance(row, ResultRow) and row.ok and old.ok else ())
        diffs = rowcheck.differences(row, old, columns)
        if diffs:
            conflicts.append(f"{where} ({row.primary} {getattr(row, row.primary)!r}): "
                             + ", ".join(f"{c} {_short(a)} vs stored {_short(b)}" for c, a, b in diffs))
    _refuse(conflicts, "with the store", path)


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def _refuse(conflicts: list[str], where: str, path: Path) -> None:
    if conflicts:
        more = f"; and {len(conflicts) - SHOWN} more" if len(conflicts) > SHOWN else ""
        raise DDBenchError(f"{path}: {len(conflicts)} row(s) conflict {where}, nothing imported: "
                           + "; ".join(conflicts[:SHOWN]) + more)


def _copy(src: Path, target: Path, sha: str) -> None:
    """Copy a checked file by rename, without following a link, and only if its bytes are
    still those checked."""
    tmp = temp_name(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with os.fdopen(os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f, open(tmp, "xb") as out:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha:
            raise DDBenchError(f"{src}: changed while it was imported; nothing imported")
        os.replace(tmp, target)
    except OSError as exc:
        raise DDBenchError(f"cannot copy {src} to {target}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
