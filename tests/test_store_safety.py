"""A store path is trusted only once it is known to hold a ddbench store: anything else is
refused with one line and left exactly as it was; readers change nothing and work on
read-only stores; run ids are matched literally; a run whose process was killed is marked
abandoned, a live one never."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import TINY

from ddbench.storage import liveness
from ddbench.storage.records import RunRow
from ddbench.storage.store import Store

RUN = ["run", "--methods", "random,dm", "--datasets", "digits", "--ipc", "1", "--seeds", "0", *TINY]
COMPAT = Path(__file__).parent / "data" / "store-main-2e234c3.sqlite"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A store holding one tiny run (random and dm), made once; tests copy its folder."""
    from ddbench.cli import main

    root = tmp_path_factory.mktemp("made") / "S"
    with pytest.MonkeyPatch.context() as mp:  # the isolation of conftest's autouse fixture
        mp.setenv("DDBENCH_PLUGINS", os.environ.get("DDBENCH_TEST_PLUGINS", ""))
        mp.delenv("DDBENCH_DATA", raising=False)
        mp.setenv("DDBENCH_COMPILE", "off")
        mp.chdir(root.parent)
        main([*RUN, "--store", str(root / "store.sqlite")])
    return root


@pytest.fixture
def store(made, tmp_path) -> Path:
    shutil.copytree(made, tmp_path / "S")
    return tmp_path / "S" / "store.sqlite"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (SQLite's -wal and -shm included) -> its sha256."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(res, *parts: str) -> str:
    assert res.code == 2 and res.out == "", (res.code, res.out, res.err)
    line = res.err.strip()
    assert line.startswith("ddbench: error: ") and "\n" not in line, res.err
    for part in parts:
        assert part in line, line
    return line


def run_id(path: Path) -> str:
    """The first run's id, read as ddbench reads (a plain read-only connection would leave
    -wal and -shm files beside a store in WAL mode)."""
    st = Store(path, readonly=True)
    try:
        return st.run_ids("")[0]
    finally:
        st.close()


def foreign(path: Path, journal: str) -> Path:
    """Another program's database: one table of its own, in ``journal`` mode."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA journal_mode={journal}")
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('mine')")
        db.commit()
    return path


def commands(target: Path, work: Path, store: Path) -> dict[str, list[str]]:
    """Every command that opens a store, aimed at ``target``."""
    return {
        "report": ["report", "--store", str(target)],
        "compare": ["compare", "dm", "random", "--store", str(target)],
        "check": ["check", str(work / "base.json"), "--update", "--store", str(target)],
        "export": ["export", run_id(store)[:6], str(work / "out"), "--store", str(target)],
        "run": [*RUN, "--store", str(target)],
        "dry-run": [*RUN, "--dry-run", "--store", str(target)],
        "import": ["import", str(work / "exported"), "--store", str(target)],
    }


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_programs_database_is_refused_and_left_untouched(ddb, store, tmp_path, journal):
    work = tmp_path / "work"
    work.mkdir()
    assert ddb("export", run_id(store), str(work / "exported"), "--store", str(store)).code == 0
    target = foreign(work / "other.db", journal)
    before = snapshot(work)
    assert not any(name.endswith(("-wal", "-shm")) for name in before)
    for name, args in commands(target, work, store).items():
        line = one_line_error(ddb(*args), "is a SQLite database but not a ddbench store", "its tables: notes",
                              "left untouched")
        assert snapshot(work) == before, (name, line)  # byte-identical, no -wal/-shm, no artifacts


def _write(path: Path, kind: str, store: Path) -> None:
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("results: none\n")
    elif kind == "random bytes":
        path.write_bytes(hashlib.sha256(b"x").digest() * 200)
    elif kind == "truncated":
        data = store.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "torn page":
        data = store.read_bytes()
        path.write_bytes(data[: 4 * 4096] + bytes(range(256)) * 16 + data[5 * 4096:])
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "0 bytes":
        path.touch()
    elif kind == "no tables":  # what a creation interrupted before its schema leaves
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    elif kind == "application id":
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA application_id=1234")


#: kind of file at the store path -> (what readers say, what `run` says; None: run takes it)
NOT_STORES = {
    "folder": ("is a directory; --store takes a file path",) * 2,
    "text": ("is not a SQLite database; --store takes a ddbench result store",) * 2,
    "random bytes": ("is not a SQLite database",) * 2,
    "truncated": ("is damaged (database disk image is malformed); nothing was written to it",) * 2,
    "torn page": ("is damaged (Page 5",) * 2,
    "fifo": ("is not a regular file",) * 2,
    "0 bytes": ("is empty (0 bytes): nothing is stored there yet", None),
    "no tables": ("is an empty SQLite database: nothing is stored there yet", None),
    "application id": ("is another program's SQLite database (application_id 1234, no tables)",) * 2,
}


@pytest.mark.parametrize("kind", NOT_STORES)
def test_what_is_not_a_store_is_refused_in_one_line(ddb, store, tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    assert ddb("export", run_id(store), str(work / "exported"), "--store", str(store)).code == 0
    target = work / "target.sqlite"
    _write(target, kind, store)
    before = snapshot(work)
    reader, writer = NOT_STORES[kind]
    for name, args in commands(target, work, store).items():
        if name in ("run", "import") and writer is None:
            continue  # taken: test_a_run_initialises_a_store_that_holds_nothing
        if name == "dry-run" and writer is None:
            res = ddb(*args)
            assert res.code == 0 and "0 already stored" in res.out, res.err
        else:
            one_line_error(ddb(*args), repr(str(target)), reader if name != "run" else writer)
        assert snapshot(work) == before, name


@pytest.mark.parametrize("kind", ["0 bytes", "no tables"])
def test_a_run_initialises_a_store_that_holds_nothing(ddb, tmp_path, kind):
    """A 0-byte file or a table-less database holds nothing to lose, and is what an
    interrupted creation leaves: `run` makes it a store (readers refused it above)."""
    target = tmp_path / "s" / "store.sqlite"
    target.parent.mkdir()
    _write(target, kind, target)
    res = ddb("run", "--methods", "random", "--datasets", "digits", "--ipc", "1", "--seeds", "0", *TINY,
              "--store", str(target))
    assert res.code == 0, res.err
    assert ddb("report", "--store", str(target)).code == 0
    st = Store(target, readonly=True)
    try:
        assert [r.status for r in st.runs(st.run_ids(""))] == ["finished"]
    finally:
        st.close()


def test_readers_change_nothing_even_on_an_old_store(ddb, store, tmp_path):
    old = tmp_path / "old" / "store.sqlite"
    old.parent.mkdir()
    shutil.copyfile(COMPAT, old)
    work = tmp_path / "out"
    work.mkdir()
    for target in (store, old):
        before = snapshot(target.parent)
        rid = run_id(target)
        for args in (["report", "--run", rid[:5]], ["compare", "dm", "random"],
                     ["check", str(work / f"{rid}.json"), "--update"], ["export", rid, str(work / rid)]):
            res = ddb(*args, "--store", str(target))
            assert res.code == 0, (args, res.err)
            assert snapshot(target.parent) == before, args  # no column added, no WAL switch, no file
    with contextlib.closing(sqlite3.connect(f"file:{old}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert "driver" not in {r[1] for r in db.execute("PRAGMA table_info(runs)")}


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` and its files read-only for real: write bits off and, when the tests run
    as root (which ignores them), the process acting as 'nobody' until the block ends."""
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    dropped = False
    try:
        if os.geteuid() == 0:
            try:
                os.setegid(65534)
                os.seteuid(65534)
                dropped = True
            except OSError as exc:
                pytest.skip(f"running as root and cannot act as another user ({exc}): root ignores read-only files")
        try:
            with open(folder / "probe", "wb"):
                pass
        except PermissionError:
            pass
        else:
            pytest.skip(f"{folder} stays writable here (file system ignores permissions)")
        yield
    finally:
        if dropped:
            os.seteuid(0)
            os.setegid(0)
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.fixture
def shared(made):
    """A copy of the store in a folder every user may enter (a root test acts as 'nobody'),
    and a writable folder for what readers write."""
    root = Path(tempfile.mkdtemp(prefix="ddbench-ro-"))
    try:
        root.chmod(0o755)
        shutil.copytree(made, root / "S")
        (root / "out").mkdir()
        (root / "out").chmod(0o777)
        yield root / "S" / "store.sqlite", root / "out"
    finally:
        shutil.rmtree(root)


def test_a_read_only_store_can_be_read_but_not_run_into(ddb, shared, monkeypatch):
    store, out = shared
    before = snapshot(store.parent)
    rid = run_id(store)
    monkeypatch.chdir(out)
    with read_only(store.parent):
        for args in (["report"], ["compare", "dm", "random"], ["check", str(out / "base.json"), "--update"],
                     ["export", rid[:6], str(out / "exported")]):
            res = ddb(*args, "--store", str(store))
            assert res.code == 0, (args, res.err)
        one_line_error(ddb(*RUN, "--store", str(store)), "is not writable; choose another with --store")
        one_line_error(ddb(*RUN, "--store", str(store.parent / "new" / "store.sqlite")),
                       "is not writable", "cannot create files in")
    assert snapshot(store.parent) == before
    assert json.loads((out / "exported" / "results.json").read_text())["run"]["run_id"] == rid


def test_run_ids_are_matched_literally(ddb, store):
    st = Store(store)
    try:
        for rid in ("x_1000000000", "xa100000000a", "x%", "x%0000000000"):
            st.start_run(RunRow(rid, command="ddbench run ...", preset="small"))
            st.finish_run(rid, "finished")
        assert st.resolve_run("x_") == "x_1000000000"  # as a LIKE pattern it matched both
        assert st.resolve_run("x%") == "x%"  # an exact id wins over the ids it begins
        assert st.run_ids("X") == [] and st.run_ids("%") == [] and st.run_ids("_") == []
        assert len(st.run_ids("")) == 5
    finally:
        st.close()
    first = run_id(store)
    patterns = ["%", "_", "_" * 12, first[:4] + "%", first[:4] + "_"] + [first.upper()] * (first.upper() != first)
    for pattern in patterns:
        one_line_error(ddb("report", "--run", pattern, "--store", str(store)), f"--run {pattern!r} matches no run")
        one_line_error(ddb("export", pattern, str(store.parent / "out"), "--store", str(store)),
                       f"run {pattern!r} matches no run")
    one_line_error(ddb("report", "--run", "x", "--store", str(store)), "--run 'x' matches 4 runs; recent runs:")
    one_line_error(ddb("report", "--run", "", "--store", str(store)), "--run is empty")
    one_line_error(ddb("report", "--store", " "), "--store is empty")
    assert ddb("report", "--run", first[:4], "--store", str(store)).code == 0


def _child_driver():
    """A process that records itself as ``this_process()`` would in a run (liveness.py
    loaded by path: stdlib only), then waits to be killed."""
    code = ("import importlib.util, sys, time\n"
            f"spec = importlib.util.spec_from_file_location('lv', {liveness.__file__!r})\n"
            "lv = importlib.util.module_from_spec(spec); spec.loader.exec_module(lv)\n"
            "print(lv.this_process(), flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def _running(store: Path, rid: str, driver: str | None) -> None:
    st = Store(store)
    try:
        st.start_run(RunRow(rid, command="ddbench run ...", preset="small"))
    finally:
        st.close()
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        db.execute("UPDATE runs SET driver=? WHERE run_id=?", (driver, rid))


def _statuses(store: Path, readonly: bool = False) -> dict[str, str]:
    st = Store(store, readonly=readonly)
    try:
        return {r.run_id: r.status for r in st.runs(st.run_ids(""))}
    finally:
        st.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="whether a process ended is only known from /proc (Linux): elsewhere no run is marked")
def test_a_killed_run_is_marked_abandoned_and_a_live_one_never(ddb, store):
    me = json.loads(liveness.this_process())
    if "scope" not in me:
        pytest.skip("this system does not say which boot and PID namespace a process runs in: no run is marked")
    proc, driver = _child_driver()
    try:
        info = json.loads(driver)
        assert info["host"] == socket.gethostname() and info["pid"] == proc.pid and "start" in info
        other_host = json.dumps({**me, "host": me["host"] + "-elsewhere"})
        other_scope = json.dumps({**me, "scope": "0" * 16, "pid": proc.pid})
        reused = json.dumps({**me, "start": me["start"] - 1})  # this pid, but a process started later
        for rid, d in [("killed000001", driver), ("live00000001", liveness.this_process()),
                       ("otherhost001", other_host), ("otherscope01", other_scope), ("olddriver001", None),
                       ("garbled00001", "host:123"), ("reusedpid001", reused)]:
            _running(store, rid, d)
        assert _statuses(store)["killed000001"] == "running"  # its process is alive
    finally:
        proc.kill()
        proc.wait()
    before = snapshot(store.parent)
    seen = _statuses(store, readonly=True)  # a reader sees it as it is, and writes nothing
    assert snapshot(store.parent) == before
    assert seen["killed000001"] == seen["reusedpid001"] == "abandoned"
    res = ddb("run", "--methods", "random", "--datasets", "digits", "--ipc", "1", "--seeds", "0", *TINY,
              "--store", str(store))  # stored already: only opens the store
    assert res.code == 0, res.err
    host = socket.gethostname()
    assert f"ddbench: run killed000001 was left running by {host}:{proc.pid}, which has ended; marked abandoned" \
        in res.err
    stored = _statuses(store)
    assert stored["killed000001"] == stored["reusedpid001"] == "abandoned"
    for rid in ("live00000001", "otherhost001", "otherscope01", "olddriver001", "garbled00001"):
        assert stored[rid] == "running", rid
    assert stored[run_id(store)] == "finished"


def test_a_run_records_its_driver(store):
    st = Store(store, readonly=True)
    try:
        (run,) = st.runs([run_id(store)])
    finally:
        st.close()
    info = json.loads(run.driver)
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    assert not liveness.gone(run.driver)


@pytest.mark.parametrize("value,fragment", [
    ("[a.sqlite, b.sqlite]", "store: expected one value, got a list"),
    ("{a: 1}", "store: expected a value or a list of values, got dict"),
])
def test_a_store_in_a_config_file_must_be_one_path(ddb, tmp_path, value, fragment):
    """(``store: null`` is the default store, as ``--print-config`` writes an unset option.)"""
    config = tmp_path / "sweep.yaml"
    config.write_text(f"store: {value}\nmethods: [random]\ndatasets: [digits]\n")
    before = snapshot(tmp_path)
    one_line_error(ddb("run", "--config", str(config), *TINY), fragment)
    assert snapshot(tmp_path) == before
