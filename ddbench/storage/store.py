"""SQLite result store (WAL): one row per evaluation, one per synthetic set, one per run,
the scalar series recorded while a set was distilled (``traces``: e.g. the MI estimate),
and which cells each run planned (``run_cells``).

The tables are the records of ``ddbench.storage.records``. Columns added there after a store was
created are added to it when it is opened (``ALTER TABLE ADD COLUMN``): older stores stay
readable, their rows have NULL there.

Only the driver process writes (executors' workers send their rows to it). Rows are keyed by content hashes, so re-running a
command finds what is done: ``ok`` rows are skipped, ``failed`` rows are retried and
replaced, nothing is duplicated, and an ``ok`` row is never overwritten.

Writers (``run``, ``import``) open a path only once it is known to hold a ddbench store or
nothing yet; readers (``report``, ``compare``, ``check``, ``export``, a dry run) open it
read-only, so they work on read-only stores and never change one (no new columns, no WAL
switch, no files beside it). What is refused, and why a 0-byte file may become a store
but only for a writer: ``ddbench.storage.storefile``.

A run records its driver process (``RunRow.driver``); a run left ``running`` by a driver
that has surely ended (killed with -9, say; ``ddbench.storage.liveness`` says when that is
sure) is marked ``abandoned`` when a writer next opens the store, and read so by readers.
Run ids are matched literally: an id or a unique prefix of one, no patterns.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

from ddbench.errors import DDBenchError
from ddbench.storage import liveness, storefile
from ddbench.storage.atomic import deepest_existing, probe_writable
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
    """Fail early (before any work) when ``path`` holds something that is not a ddbench
    store (``storefile.inspect``), or when the store cannot be created or written: the
    file itself, and its folder, where SQLite keeps the ``-wal`` and ``-shm`` files.

    Probes by opening the file for appending (nothing written) and by creating (and
    removing) a file in the deepest existing folder: permission bits alone say nothing
    for root or on a read-only file system.
    """
    path = Path(path)
    bad = f"store {str(path)!r} is not writable; choose another with --store"
    storefile.inspect(path, write=True)
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            raise DDBenchError(f"{bad} ({exc.strerror})") from None
    probe = deepest_existing(path.parent)
    if not probe.is_dir():
        raise DDBenchError(f"{bad} ({str(probe)!r} is not a folder)")
    try:
        probe_writable(probe)
    except OSError as exc:
        raise DDBenchError(f"{bad} (cannot create files in {str(probe)!r}: {exc.strerror})") from None


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


def stored_cells(path: Path, keys) -> set[str]:
    """Keys among ``keys`` with an ``ok`` row at ``path``, read without writing (a dry run):
    none where nothing is stored yet; refused where a run would refuse the path."""
    if storefile.inspect(Path(path), write=True) != storefile.STORE:
        return set()
    store = Store(path, readonly=True)
    try:
        return store.done_cells(keys)
    finally:
        store.close()


class Store:
    """The store at ``path``: created or brought up to date for writing, or with
    ``readonly`` opened as it is (refused unless it holds a store)."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        #: runs this opening marked abandoned (their driver has ended)
        self.abandoned: list[RunRow] = []
        if readonly:
            self.db, tables = storefile.open_reader(self.path)
            self.tables = set(tables)
            self.db.row_factory = sqlite3.Row
            return
        check_writable(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
        except sqlite3.DatabaseError as exc:
            raise DDBenchError(f"store {str(path)!r} cannot be used: {exc}") from None
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(f"BEGIN;\n{schema()}\nCOMMIT;")  # a new store's tables all or none
            migrate(self.db)
            self.tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            self.abandoned = self._settle_runs()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise DDBenchError(f"store {str(path)!r} cannot be used: {exc}") from None

    def _settle_runs(self) -> list[RunRow]:
        """Mark ``abandoned`` the runs left ``running`` by a driver that has surely ended."""
        running = [RunRow.from_sql(r) for r in self.db.execute(
            "SELECT * FROM runs WHERE status='running' AND driver IS NOT NULL")]
        dead = [dataclasses.replace(r, status="abandoned") for r in running if liveness.gone(r.driver)]
        with self.db:
            self.db.executemany("UPDATE runs SET status='abandoned' WHERE run_id=? AND status='running'",
                                [(r.run_id,) for r in dead])
        return dead

    @property
    def artifacts_dir(self) -> Path:
        return self.path.parent / "artifacts"

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------- runs
    def start_run(self, run: RunRow) -> None:
        """Store ``run`` as running, driven by this process."""
        with self.db:
            self._insert(dataclasses.replace(run, started=time.time(), status="running",
                                             driver=liveness.this_process()))

    def add_run_cells(self, run_id: str, keys) -> None:
        """Remember every cell a run planned, computed or found stored, so that a report of
        the run (``--run``) shows all of them."""
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO run_cells VALUES (?,?)",
                                [(run_id, k) for k in keys])

    def run_ids(self, prefix: str) -> list[str]:
        """Ids starting with ``prefix``, character for character (``%`` and ``_`` are no
        patterns), oldest first."""
        return [r[0] for r in self.db.execute(
            "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY started", (len(prefix), prefix))]

    def resolve_run(self, prefix: str, what: str = "--run") -> str:
        """The run whose id is ``prefix`` or, failing that, the one run whose id starts with
        it; else an error listing recent runs."""
        ids = self.run_ids(prefix)
        if prefix and prefix in ids:
            return prefix
        if len(ids) != 1 or not prefix.strip():
            known = ", ".join(self.run_ids("")[-5:]) or "none"
            found = "no run" if not ids else f"{len(ids)} runs"
            raise DDBenchError(f"{what} {prefix!r} matches {found}; recent runs: {known}")
        return ids[0]

    def runs(self, run_ids) -> list[RunRow]:
        """The runs' rows; a reader sees a run left running by an ended driver as abandoned."""
        ids = sorted(set(run_ids))
        rows = [RunRow.from_sql(r) for r in self.db.execute(
            f"SELECT * FROM runs WHERE run_id IN ({','.join('?' * len(ids))}) ORDER BY started", ids)]
        return [dataclasses.replace(r, status="abandoned")
                if self.readonly and r.status == "running" and liveness.gone(r.driver) else r for r in rows]

    def run_cell_keys(self, run_id: str) -> list[str]:
        """The run's planned cells; rows it computed itself for runs older than run_cells."""
        keys = [] if "run_cells" not in self.tables else [
            r[0] for r in self.db.execute("SELECT cell_key FROM run_cells WHERE run_id=?", (run_id,))]
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
        if "traces" not in self.tables:  # a reader of a store older than traces
            return out
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
