"""A result store written by an earlier ddbench still works: it opens, it reports, and the
cells it holds are found as done by the same commands (result keys have not changed).

The fixture ``data/store-main-2e234c3.sqlite`` was written by ``ddbench run`` of main at
commit 2e234c3 (checked out on its own, run with the project's environment,
``DDBENCH_PLUGINS= DDBENCH_COMPILE=off``), with the ``COMMANDS`` below in order into one
store, each followed by ``--store out/store.sqlite --data-root data``; the store was then
checkpointed (``PRAGMA wal_checkpoint(TRUNCATE)``), set to ``journal_mode=DELETE`` and
vacuumed. Only the SQLite file is kept (no artifacts, no expert trajectories).

If a change to the keys is intended, this test is where it shows: the fixture's cells would
be computed again by every existing store's next run.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "data" / "store-main-2e234c3.sqlite"

TINY = ["--datasets", "digits", "--ipc", "1", "--seeds", "0",
        "--set", "eval.epochs=2", "--set", "eval.num_eval=1", "--quiet"]
MTT = ["--set", "mtt.iterations=2", "--set", "mtt.syn_steps=2", "--set", "mtt.num_experts=1",
       "--set", "mtt.train_epochs=2", "--set", "mtt.max_start_epoch=1", "--set", "mtt.expert_epochs=1"]

#: run by main at commit 2e234c3 to write the fixture, in this order, as
#: ``ddbench run ARGS --store out/store.sqlite --data-root data``;
#: (id, ARGS, evaluation cells the command plans)
COMMANDS = [
    # every kind of method: a baseline, a base distiller, a base with an objective, one with experts
    ("methods", ["--methods", "random,dm,dm+mim,mtt", "--set", "dm.iterations=2", *MTT, *TINY],
     4),
    # swept parameters of a distiller and of an objective (labels dm[iterations=3]+mim[lambda=0.4])
    ("sweeps", ["--methods", "dm,dm+mim", "--set", "dm.iterations=2,3", "--set", "mim.lambda=0.4,0.8",
                *TINY], 6),
    # a second data condition and a second evaluation model
    ("conditions-models", ["--methods", "random,dm", "--models", "convnet,mlp",
                           "--conditions", "clean,noise:0.2", "--set", "dm.iterations=2", *TINY], 8),
]
#: distinct cells over all the commands (they overlap), all stored with status ok
FIXTURE_CELLS = 14

SUMMARY = re.compile(
    r"(\d+) synthetic set\(s\), (\d+) evaluation cell\(s\), (\d+) already stored, (\d+) to run")


@pytest.fixture
def old_store(tmp_path) -> Path:
    """A copy of the fixture (opening a store adds columns and WAL files to it)."""
    copy = tmp_path / "old" / "store.sqlite"
    copy.parent.mkdir()
    shutil.copyfile(FIXTURE, copy)
    return copy


def _fixture_keys(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT cell_key FROM results WHERE status='ok'")]
    finally:
        db.close()


@pytest.mark.parametrize("args,n_cells", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_the_cells_of_an_old_store_are_found_done(ddb, old_store, tmp_path, args, n_cells):
    res = ddb("run", *args, "--dry-run", "--store", str(old_store),
              "--data-root", str(tmp_path / "data"))
    assert res.code == 0, res.err
    m = SUMMARY.search(res.out)
    assert m, res.out
    _, cells, stored, to_run = map(int, m.groups())
    assert (cells, stored, to_run) == (n_cells, n_cells, 0), f"cells of {args} not found as done:\n{res.out}"


def test_an_old_store_opens_and_reports(ddb, old_store):
    from ddbench.storage.store import Store

    keys = _fixture_keys(old_store)
    assert len(keys) == FIXTURE_CELLS
    st = Store(old_store)
    try:
        assert st.done_cells(keys) == set(keys)
        assert len(st.results()) == FIXTURE_CELLS
    finally:
        st.close()
    res = ddb("report", "--store", str(old_store))
    assert res.code == 0, res.err
    for method in ("random", "dm", "dm+mim", "mtt", "dm[iterations=3]",
                   "dm[iterations=3]+mim[lambda=0.4]"):
        assert method in res.out, (method, res.out)
    assert "noise:0.2" in res.out and "mlp" in res.out, res.out


def test_the_fixture_is_as_written():
    """The fixture itself stays untouched (the tests above work on copies)."""
    db = sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == FIXTURE_CELLS
        assert {r[1] for r in db.execute("PRAGMA table_info(results)")} >= {"cell_key", "worker"}
    finally:
        db.close()
