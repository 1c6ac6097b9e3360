"""SQLite result store (WAL): one row per evaluation, one per synthetic set, one per run,
the scalar series recorded while a set was distilled (``traces``: e.g. the MI estimate),
and which cells each run planned (``run_cells``).

The tables are the records of ``ddbench.storage.records``. Columns added there after a store was
created are added to it when it is opened (``ALTER TABLE ADD COLUMN``): older stores stay
readable, their rows have NULL there.

Only the driver process writes (executors' workers send their rows to it). Rows are keyed by content hashes, so re-running a
command finds what is done: ``ok`` rows are skipped, ``failed`` rows are retried and
replaced, nothing is duplicated, and an ``ok`` row is never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from ddbench.errors import DDBenchError
from ddbench.storage.records import TABLES, Record, ResultRow, RunRow, SynsetRow

#: tables that are not records: which cells each run planned, and the scalar series
#: recorded while a set was distilled
LINK_SCHEMA = """
CREATE INDEX IF NOT EXISTS results_by_distill ON results(distill_key);
CREATE TABLE IF NOT EXISTS run_cells (
    run_id TEXT, cell_key TEXT, PRIMARY KEY (run_id, cell_key)
);
CREATE TABLE IF NOT EXISTS traces (
    distill_key TEXT, series TEXT, step INTEGER, value REAL,
    PRIMARY KEY (distill_key, series, step)
);
"""


def schema() -> str:
    """The CREATE statements: one table per record of ``ddbench.storage.records``, then the links."""
    out = []
    for rec in TABLES:
        cols = ", ".join(f"{c} {t}" + (" PRIMARY KEY" if c == rec.primary else "")
                         for c, t in rec.sql_types().items())
        out.append(f"CREATE TABLE IF NOT EXISTS {rec.table} ({cols});")
    return "\n".join(out) + LINK_SCHEMA


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
    """Add the columns that the records have and an older store lacks (one transaction)."""
    missing = []
    for rec in TABLES:
        have = {r[1] for r in db.execute(f"PRAGMA table_info({rec.table})")}
        missing += [f"ALTER TABLE {rec.table} ADD COLUMN {c} {t}"
                    for c, t in rec.sql_types().items() if c not in have]
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
            self.db.executescript(schema())
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
    def start_run(self, run: RunRow) -> None:
        with self.db:
            self._insert(dataclasses.replace(run, started=time.time(), status="running"))

    def add_run_cells(self, run_id: str, keys) -> None:
        """Remember every cell a run planned, computed or found stored, so that a report of
        the run (``--run``) shows all of them."""
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO run_cells VALUES (?,?)",
                                [(run_id, k) for k in keys])

    def run_ids(self, prefix: str) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY started", (prefix + "%",))]

    def resolve_run(self, prefix: str, what: str = "--run") -> str:
        """The one run whose id starts with ``prefix``; else an error listing recent runs."""
        ids = self.run_ids(prefix)
        if len(ids) != 1:
            known = ", ".join(self.run_ids("")[-5:]) or "none"
            found = "no run" if not ids else f"{len(ids)} runs"
            raise DDBenchError(f"{what} {prefix!r} matches {found}; recent runs: {known}")
        return ids[0]

    def runs(self, run_ids) -> list[RunRow]:
        ids = sorted(set(run_ids))
        return [RunRow.from_sql(r) for r in self.db.execute(
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

    def _insert(self, rec: Record, verb: str = "INSERT OR REPLACE") -> bool:
        """Write ``rec``; True when a row was written (``INSERT OR IGNORE`` skips a stored key)."""
        cols = rec.columns()
        cur = self.db.execute(f"{verb} INTO {rec.table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                              rec.values())
        return cur.rowcount == 1

    def write_result(self, row: ResultRow) -> None:
        """Insert a row; replaces a failed row of the same key, never an ``ok`` one."""
        row = dataclasses.replace(row, created=time.time())
        with self.db:
            cur = self.db.execute(
                "SELECT status FROM results WHERE cell_key=?", (row.cell_key,)
            ).fetchone()
            if cur is not None and cur["status"] == "ok":
                return
            self._insert(row)

    def results(self, keys=None) -> list[ResultRow]:
        if keys is None:
            return [ResultRow.from_sql(r) for r in self.db.execute("SELECT * FROM results")]
        keys = list(keys)
        out = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT * FROM results WHERE cell_key IN ({','.join('?' * len(chunk))})"
            out.extend(ResultRow.from_sql(r) for r in self.db.execute(q, chunk))
        return out

    # ---------------------------------------------------------------- synthetic sets
    def synset(self, distill_key: str) -> SynsetRow | None:
        r = self.db.execute("SELECT * FROM synsets WHERE distill_key=?", (distill_key,)).fetchone()
        return SynsetRow.from_sql(r) if r is not None else None

    def write_synset(self, row: SynsetRow, trace: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """Insert or replace a set's row and, in the same transaction, its trace."""
        row = dataclasses.replace(row, created=time.time())
        with self.db:
            self._insert(row)
            self.db.execute("DELETE FROM traces WHERE distill_key=?", (row.distill_key,))
            self.db.executemany(
                "INSERT OR REPLACE INTO traces VALUES (?,?,?,?)",
                [(row.distill_key, name, step, value)
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

    # ---------------------------------------------------------------- imports
    def merge(self, run: RunRow, cell_keys, synsets: list[SynsetRow],
              traces: dict[str, dict[str, list]], results: list[ResultRow]) -> tuple[int, int, int]:
        """Add another store's rows as they were stored (``created`` kept, so that reports
        pick the same newest sets), in one transaction. A key stored already keeps its row:
        nothing is replaced or duplicated. Returns (results added, results skipped, sets added)."""
        with self.db:
            self._insert(run, "INSERT OR IGNORE")
            self.db.executemany("INSERT OR IGNORE INTO run_cells VALUES (?,?)",
                                [(run.run_id, k) for k in cell_keys])
            new_sets = [s.distill_key for s in synsets if self._insert(s, "INSERT OR IGNORE")]
            self.db.executemany(
                "INSERT OR IGNORE INTO traces VALUES (?,?,?,?)",
                [(k, name, step, value) for k in new_sets
                 for name, points in traces.get(k, {}).items() for step, value in points])
            added = sum(self._insert(r, "INSERT OR IGNORE") for r in results)
        return added, len(results) - added, len(new_sets)
