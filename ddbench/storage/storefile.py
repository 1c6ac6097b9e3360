"""What a store path holds, found out without writing to it.

A store is opened for writing only once it is known to be a ddbench store or to hold
nothing yet, so a mistyped ``--store`` never changes another program's database, a text
file or a folder. Each refusal is one line naming the path:

- a folder, or anything but a regular file: refused;
- a path that does not exist: readers (``report``, ``compare``, ``check``, ``export``)
  refuse it; writers (``run``, ``import``) create the store;
- a 0-byte file, or a SQLite database without any table: nothing is stored yet, so readers
  refuse it. Writers initialise it: it holds nothing that could be lost, it is what
  ``touch store.sqlite`` or a store whose creation was interrupted (before its schema,
  which is written in one transaction) leaves, and the path was named as the store to
  write. One whose ``user_version`` or ``application_id`` is set belongs to some program,
  and is refused like any other foreign database;
- a file that is not SQLite, a damaged database (``PRAGMA quick_check``: a truncated file,
  a torn page, a broken index that would hide stored cells) or another program's database
  (tables, but not ddbench's three record tables with their keys): refused, untouched.

The check, and every reader, go through a read-only connection that leaves nothing behind
and works on read-only files, folders and media: a database in WAL mode without a ``-wal``
file is opened ``immutable`` (otherwise SQLite would create ``-wal`` and ``-shm`` files
beside it, and a read-only connection cannot remove them again). A run that starts or
ends while such a reader reads may make that one report fail; running it again reads the
store as the run left it.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from ddbench.errors import DDBenchError
from ddbench.storage.records import TABLES

#: the first 16 bytes of every SQLite 3 database
HEADER = b"SQLite format 3\x00"
#: what holds nothing yet (a writer initialises it); what holds a store
EMPTY, STORE = "empty", "store"


def describe(path: Path) -> str:
    return repr(str(path))


def _header(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(100)
    except OSError as exc:
        raise DDBenchError(f"store {describe(path)} cannot be read ({exc.strerror})") from None


def connect_readonly(path: Path, header: bytes | None = None) -> sqlite3.Connection:
    """A connection that can only read ``path`` and creates no file beside it."""
    header = _header(path) if header is None else header
    wal = len(header) > 18 and header[18] == 2  # file format write version 2: WAL mode
    immutable = wal and not Path(f"{path}-wal").exists()
    uri = f"file:{urllib.parse.quote(str(Path(path).absolute()))}?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, timeout=30)


def _tables(db: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    return {n: {r[1] for r in db.execute("SELECT * FROM pragma_table_info(?)", (n,))} for n in names}


def _verdict(path: Path, db: sqlite3.Connection) -> tuple[str, dict[str, set[str]]]:
    problems = [r[0] for r in db.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        found = "; ".join(p.replace("*** in database main ***", "").strip() for p in problems)
        raise sqlite3.DatabaseError(found.replace("\n", " ")[:200])
    tables = _tables(db)
    ours = {rec.table: rec.primary for rec in TABLES}
    if not tables:
        marks = [f"{p} {v}" for p in ("application_id", "user_version")
                 if (v := db.execute(f"PRAGMA {p}").fetchone()[0])]
        if marks:
            raise DDBenchError(f"store {describe(path)} is another program's SQLite database ({', '.join(marks)}, "
                               "no tables); left untouched: pass another --store")
        return EMPTY, tables
    if all(primary in tables.get(table, ()) for table, primary in ours.items()):
        return STORE, tables
    listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise DDBenchError(f"store {describe(path)} is a SQLite database but not a ddbench store (its tables: {listed}; "
                       f"a store has {', '.join(ours)}); left untouched: pass another --store")


def inspect(path: Path, write: bool) -> str | None:
    """What ``path`` holds: ``None`` (nothing: a writer creates it), ``EMPTY`` (a writer
    initialises it) or ``STORE``; everything else refused with one line (see the module)."""
    verdict, db, _ = _examine(Path(path), write)
    _close(db)
    return verdict


def open_reader(path: Path) -> tuple[sqlite3.Connection, dict[str, set[str]]]:
    """A read-only connection to the store at ``path`` (refused unless it holds one), and its
    tables with their columns (a reader queries only what an older store has)."""
    _, db, tables = _examine(Path(path), write=False)
    return db, tables


def _examine(path: Path, write: bool) -> tuple[str | None, sqlite3.Connection | None, dict[str, set[str]]]:
    if not path.exists() and not path.is_symlink():
        if write:
            return None, None, {}
        raise DDBenchError(f"store {describe(path)} does not exist; run `ddbench run` first or pass --store")
    if path.is_dir():
        raise DDBenchError(f"store {describe(path)} is a directory; --store takes a file path")
    if not path.is_file():
        raise DDBenchError(f"store {describe(path)} is not a regular file; --store takes a SQLite file")
    header = _header(path)
    if not header and not write:
        raise DDBenchError(f"store {describe(path)} is empty (0 bytes): nothing is stored there yet; "
                           "run `ddbench run` first or pass another --store")
    if not header:
        return EMPTY, None, {}
    if not header.startswith(HEADER):
        raise DDBenchError(f"store {describe(path)} is not a SQLite database; --store takes a ddbench result "
                           "store" + (" or a new file" if write else ""))
    db = None
    try:
        db = connect_readonly(path, header)
        verdict, tables = _verdict(path, db)
    except sqlite3.OperationalError as exc:
        _close(db)
        raise DDBenchError(f"store {describe(path)} cannot be read ({exc}); nothing was written to it") from None
    except sqlite3.DatabaseError as exc:
        _close(db)
        raise DDBenchError(f"store {describe(path)} is damaged ({exc}); nothing was written to it: restore it "
                           "from a copy or pass another --store") from None
    except BaseException:
        _close(db)
        raise
    if verdict == EMPTY and not write:
        _close(db)
        raise DDBenchError(f"store {describe(path)} is an empty SQLite database: nothing is stored there yet; "
                           "run `ddbench run` first or pass another --store")
    return verdict, db, tables


def _close(db: sqlite3.Connection | None) -> None:
    if db is not None:
        db.close()
