"""SQLite result store (WAL): one row per evaluation, one per synthetic set, one per run,
the scalar series recorded while a set was distilled (``traces``: e.g. the MI estimate),
and which cells each run planned (``run_cells``).

Columns added after a store was created come through ``MIGRATIONS`` (``ALTER TABLE ADD
COLUMN`` when the store is opened): older stores stay readable, their rows have NULL there.

Only the driver process writes (executors' workers send their rows to it). Rows are keyed by content hashes, so re-running a
command finds what is done: ``ok`` rows are skipped, ``failed`` rows are retried and
replaced, nothing is duplicated, and an ``ok`` row is never overwritten.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from ddbench.errors import DDBenchError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started REAL, finished REAL, command TEXT, preset TEXT,
    versions TEXT, git_rev TEXT, status TEXT
);
CREATE TABLE IF NOT EXISTS synsets (
    distill_key TEXT PRIMARY KEY, run_id TEXT, method TEXT, params TEXT, dataset TEXT,
    conditions TEXT, ipc INTEGER, seed INTEGER, status TEXT, error TEXT, artifact TEXT,
    grid TEXT, seconds REAL, iterations INTEGER, seconds_per_iter REAL, peak_mem_mb REAL,
    device TEXT, versions TEXT, created REAL
);
CREATE TABLE IF NOT EXISTS results (
    cell_key TEXT PRIMARY KEY, distill_key TEXT, run_id TEXT, method TEXT, params TEXT,
    dataset TEXT, conditions TEXT, ipc INTEGER, seed INTEGER, model TEXT, model_params TEXT,
    eval_index INTEGER, protocol TEXT, protocol_hash TEXT, protocol_params TEXT,
    status TEXT, accuracy REAL, error TEXT, distill_seconds REAL, seconds REAL,
    peak_mem_mb REAL, device TEXT, versions TEXT, git_rev TEXT, created REAL
);
CREATE INDEX IF NOT EXISTS results_by_distill ON results(distill_key);
CREATE TABLE IF NOT EXISTS run_cells (
    run_id TEXT, cell_key TEXT, PRIMARY KEY (run_id, cell_key)
);
CREATE TABLE IF NOT EXISTS traces (
    distill_key TEXT, series TEXT, step INTEGER, value REAL,
    PRIMARY KEY (distill_key, series, step)
);
"""

#: (table, column, type) added since the first schema, in order; applied when missing
MIGRATIONS = (
    ("synsets", "cpu_seconds", "REAL"),
    ("synsets", "worker", "TEXT"),
    ("results", "cpu_seconds", "REAL"),
    ("results", "worker", "TEXT"),
)

RESULT_COLUMNS = (
    "cell_key", "distill_key", "run_id", "method", "params", "dataset", "conditions", "ipc",
    "seed", "model", "model_params", "eval_index", "protocol", "protocol_hash",
    "protocol_params", "status", "accuracy", "error", "distill_seconds", "seconds",
    "peak_mem_mb", "device", "versions", "git_rev", "created", "cpu_seconds", "worker",
)
SYNSET_COLUMNS = (
    "distill_key", "run_id", "method", "params", "dataset", "conditions", "ipc", "seed",
    "status", "error", "artifact", "grid", "seconds", "iterations", "seconds_per_iter",
    "peak_mem_mb", "device", "versions", "created", "cpu_seconds", "worker",
)


def check_writable(path: Path) -> None:
    """Fail early (before any work) when the store cannot be created or written.

    Probes by creating (and removing) a file in the deepest existing folder: permission
    bits alone say nothing for root or on a read-only file system.
    """
    path = Path(path)
    bad = f"store {str(path)!r} is not writable; choose another with --store"
    if path.is_dir():
        raise DDBenchError(f"store {str(path)!r} is a directory; --store takes a file path")
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise DDBenchError(f"{bad} ({str(probe)!r} is not a folder)")
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            raise DDBenchError(f"{bad} ({exc.strerror})") from None
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ddbench-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise DDBenchError(f"{bad} ({exc.strerror})") from None


def migrate(db: sqlite3.Connection) -> None:
    """Add the columns of ``MIGRATIONS`` that a store lacks (one transaction)."""
    have: dict[str, set[str]] = {}
    missing = []
    for table, column, kind in MIGRATIONS:
        if table not in have:
            have[table] = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in have[table]:
            missing.append(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    if missing:
        with db:
            for statement in missing:
                db.execute(statement)


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        check_writable(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            migrate(self.db)
        except sqlite3.DatabaseError as exc:
            raise DDBenchError(f"store {str(path)!r} cannot be used: {exc}") from None
        self.db.row_factory = sqlite3.Row

    @property
    def artifacts_dir(self) -> Path:
        return self.path.parent / "artifacts"

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------- runs
    def start_run(self, run_id: str, command: str, preset: str, versions: dict, git_rev: str):
        with self.db:
            self.db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?)",
                (run_id, time.time(), None, command, preset, json.dumps(versions), git_rev, "running"),
            )

    def add_run_cells(self, run_id: str, keys) -> None:
        """Remember every cell a run planned, computed or found stored, so that a report of
        the run (``--run``) shows all of them."""
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO run_cells VALUES (?,?)",
                                [(run_id, k) for k in keys])

    def run_ids(self, prefix: str) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY started", (prefix + "%",))]

    def runs(self, run_ids) -> list[dict]:
        ids = sorted(set(run_ids))
        return [dict(r) for r in self.db.execute(
            f"SELECT * FROM runs WHERE run_id IN ({','.join('?' * len(ids))}) ORDER BY started", ids)]

    def run_cell_keys(self, run_id: str) -> list[str]:
        """The run's planned cells; rows it computed itself for runs older than run_cells."""
        keys = [r[0] for r in self.db.execute("SELECT cell_key FROM run_cells WHERE run_id=?", (run_id,))]
        return keys or [r[0] for r in self.db.execute(
            "SELECT cell_key FROM results WHERE run_id=?", (run_id,))]

    def finish_run(self, run_id: str, status: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE runs SET finished=?, status=? WHERE run_id=?", (time.time(), status, run_id)
            )

    # ---------------------------------------------------------------- results
    def done_cells(self, keys) -> set[str]:
        """Keys among ``keys`` that already have an ``ok`` row."""
        keys = list(keys)
        done: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT cell_key FROM results WHERE status='ok' AND cell_key IN ({','.join('?' * len(chunk))})"
            done.update(r[0] for r in self.db.execute(q, chunk))
        return done

    def write_result(self, row: dict) -> None:
        """Insert a row; replaces a failed row of the same key, never an ``ok`` one."""
        row = {c: row.get(c) for c in RESULT_COLUMNS} | {"created": time.time()}
        cols = ",".join(RESULT_COLUMNS)
        marks = ",".join("?" * len(RESULT_COLUMNS))
        with self.db:
            cur = self.db.execute(
                "SELECT status FROM results WHERE cell_key=?", (row["cell_key"],)
            ).fetchone()
            if cur is not None and cur["status"] == "ok":
                return
            self.db.execute(f"INSERT OR REPLACE INTO results ({cols}) VALUES ({marks})",
                            [row[c] for c in RESULT_COLUMNS])

    def results(self, keys=None) -> list[dict]:
        if keys is None:
            return [dict(r) for r in self.db.execute("SELECT * FROM results")]
        keys = list(keys)
        out = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT * FROM results WHERE cell_key IN ({','.join('?' * len(chunk))})"
            out.extend(dict(r) for r in self.db.execute(q, chunk))
        return out

    # ---------------------------------------------------------------- synthetic sets
    def synset(self, distill_key: str) -> dict | None:
        r = self.db.execute("SELECT * FROM synsets WHERE distill_key=?", (distill_key,)).fetchone()
        return dict(r) if r is not None else None

    def write_synset(self, row: dict, trace: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """Insert or replace a set's row and, in the same transaction, its trace."""
        row = {c: row.get(c) for c in SYNSET_COLUMNS} | {"created": time.time()}
        cols = ",".join(SYNSET_COLUMNS)
        marks = ",".join("?" * len(SYNSET_COLUMNS))
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO synsets ({cols}) VALUES ({marks})",
                            [row[c] for c in SYNSET_COLUMNS])
            self.db.execute("DELETE FROM traces WHERE distill_key=?", (row["distill_key"],))
            self.db.executemany(
                "INSERT OR REPLACE INTO traces VALUES (?,?,?,?)",
                [(row["distill_key"], name, step, value)
                 for name, points in (trace or {}).items() for step, value in points],
            )

    def trace(self, distill_key: str) -> dict[str, list[tuple[int, float]]]:
        """The series recorded while ``distill_key`` was distilled: name -> [(step, value)]."""
        out: dict[str, list[tuple[int, float]]] = {}
        rows = self.db.execute(
            "SELECT series, step, value FROM traces WHERE distill_key=? ORDER BY series, step", (distill_key,))
        for name, step, value in rows:
            out.setdefault(name, []).append((step, value))
        return out
