"""``ddbench export`` and ``import`` end to end: a run's folder, merged into empty and
populated stores without duplicates, its sets evaluated as ``file:`` methods, and bad
folders refused with one line before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from conftest import TINY, rows
from safetensors import safe_open

from ddbench.storage.artifacts import load_synset
from ddbench.storage.records import ResultRow

SWEEP = ["run", "--methods", "random,dm", "--datasets", "digits", "--ipc", "1", "--seeds", "0,1", *TINY]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Store A holding one tiny sweep, made once (tests copy it): its folder."""
    from ddbench.cli import main

    root = tmp_path_factory.mktemp("share") / "A"
    with pytest.MonkeyPatch.context() as mp:  # the isolation of conftest's autouse fixture
        mp.setenv("DDBENCH_PLUGINS", os.environ.get("DDBENCH_TEST_PLUGINS", ""))
        mp.delenv("DDBENCH_DATA", raising=False)
        mp.setenv("DDBENCH_COMPILE", "off")
        mp.chdir(root.parent)
        try:
            main([*SWEEP, "--store", str(root / "db.sqlite")])
        except SystemExit as exc:
            assert not exc.code
    return root


@pytest.fixture
def store_a(sweep, tmp_path) -> Path:
    shutil.copytree(sweep, tmp_path / "A")
    return tmp_path / "A" / "db.sqlite"


def run_id(store: Path) -> str:
    with closing(sqlite3.connect(store)) as db:
        return db.execute("SELECT run_id FROM runs").fetchone()[0]


def db_digest(store: Path) -> str:
    """Every row of every table, in order: equal digests are equal stores."""
    db = sqlite3.connect(store)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        dump = {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in tables}
    finally:
        db.close()
    return hashlib.sha256(json.dumps(dump).encode()).hexdigest()


def files_digest(folder: Path) -> dict[str, str]:
    """Every file's sha256 (but SQLite's -shm: an index of the WAL that any reader rewrites)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith("-shm")}


def report_json(ddb, store: Path, *args: str) -> dict:
    res = ddb("report", "--store", str(store), "--format", "json", *args)
    assert res.code == 0, res.err
    return json.loads(res.out)


def export(ddb, store: Path, out: Path) -> Path:
    res = ddb("export", run_id(store)[:6], str(out), "--store", str(store))
    assert res.code == 0, res.err
    assert res.out.strip() == f"exported run {run_id(store)}: 4 cell(s), 4 synthetic set(s) (4 with a set file) to {out}"
    return out


def one_line_error(res, *parts: str) -> str:
    assert res.code == 2 and res.out == ""
    line = res.err.strip()
    assert line.startswith("ddbench: error: ") and "\n" not in line, res.err
    for part in parts:
        assert part in line, line
    return line


def test_export_writes_rows_statistics_sets_and_cards(ddb, store_a, tmp_path):
    out = export(ddb, store_a, tmp_path / "share")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "results.json", "sets"]
    assert not list(tmp_path.glob("share.tmp-*"))
    doc = json.loads((out / "results.json").read_text())
    assert doc["format"] == "ddbench-export/1"
    run = doc["run"]
    assert run["run_id"] == run_id(store_a) and run["command"].startswith("ddbench run --methods random,dm")
    assert run["preset"] == "small" and run["status"] == "finished" and json.loads(run["config"])["seeds"] == [0, 1]
    assert "torch" in json.loads(run["versions"]) and "git_rev" in run
    stored = sorted(rows(store_a), key=lambda r: r["cell_key"])
    assert sorted(doc["results"], key=lambda r: r["cell_key"]) == stored
    assert set(doc["results"][0]) == set(ResultRow.columns())
    assert sorted(doc["cells"]) == [r["cell_key"] for r in stored]
    assert {s["distill_key"] for s in doc["synsets"]} == {r["distill_key"] for r in stored}
    assert set(doc["traces"]) == {r["distill_key"] for r in stored}
    assert doc["statistics"] == report_json(ddb, store_a, "--run", run_id(store_a))
    cells = {(c["method"], c["model"]): c for c in doc["statistics"]["cells"]}
    assert cells[("dm", "convnet")]["n"] == 2 and cells[("dm", "convnet")]["std"] is not None

    dm = next(r for r in stored if r["method"] == "dm" and r["seed"] == 0)
    key = dm["distill_key"]
    assert {p.name for p in (out / "sets").glob(f"{key}.*")} == {f"{key}.{e}" for e in ("safetensors", "png", "md")}
    with safe_open(str(out / "sets" / f"{key}.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert {"images", "labels"} <= set(f.keys())
    assert meta["space"] == "normalized" and meta["distill_key"] == key and meta["method"] == "dm"
    assert meta["dataset"] == "digits" and json.loads(meta["ipc"]) == 1 and json.loads(meta["seed"]) == 0
    assert len(json.loads(meta["classes"])) == 10 and len(json.loads(meta["mean"])) == 1
    assert json.loads(meta["params"])["dm"]["iterations"] == 3
    card = (out / "sets" / f"{key}.md").read_text()
    assert f"{100 * dm['accuracy']:.1f}" in card and run["command"] in card
    assert f"ddbench run --methods file:sets/{key}.safetensors --datasets digits" in card
    readme = (out / "README.md").read_text()
    assert run["run_id"] in readme and f"sets/{key}.md" in readme and "ddbench import" in readme

    again = ddb("export", run_id(store_a), str(out), "--store", str(store_a))
    one_line_error(again, str(out), "not an empty folder")


def test_import_merges_without_duplicates(ddb, store_a, tmp_path):
    key = rows(store_a, "method='dm'")[0]["distill_key"]
    with closing(sqlite3.connect(store_a)) as db, db:  # dm records no trace; mim's would look so
        db.executemany("INSERT INTO traces VALUES (?,?,?,?)", [(key, "mi", s, 0.1 * s) for s in range(3)])
    out = export(ddb, store_a, tmp_path / "share")
    store_b = tmp_path / "B" / "db.sqlite"
    res = ddb("import", str(out), "--store", str(store_b))
    assert res.code == 0, res.err
    assert res.out.strip() == "imported 4 cell(s), 4 synthetic set(s); 0 cell(s) already stored"
    acc = {r["cell_key"]: r["accuracy"] for r in rows(store_a)}
    assert {r["cell_key"]: r["accuracy"] for r in rows(store_b)} == acc
    assert db_digest(store_b) == db_digest(store_a)  # every row and field, created and traces included
    assert report_json(ddb, store_b) == report_json(ddb, store_a, "--run", run_id(store_a))
    assert report_json(ddb, store_b, "--run", run_id(store_a)[:4]) == report_json(ddb, store_b)
    with closing(sqlite3.connect(store_b)) as db:
        artifacts = [r[0] for r in db.execute("SELECT artifact FROM synsets")]
    for rel in artifacts:  # where the rows say, readable by the store's own loader
        assert load_synset(store_b.parent / rel).images.shape == (10, 1, 8, 8)

    before_b, before_a = db_digest(store_b), db_digest(store_a)
    for target in (store_b, store_a):
        res = ddb("import", str(out), "--store", str(target))
        assert res.code == 0, res.err
        assert res.out.strip() == "imported 0 cell(s), 0 synthetic set(s); 4 cell(s) already stored"
    assert (db_digest(store_b), db_digest(store_a)) == (before_b, before_a)
    assert len(rows(store_a)) == 4


def test_exported_set_is_evaluated_as_a_file_method(ddb, store_a, tmp_path):
    out = export(ddb, store_a, tmp_path / "share")
    dm = next(r for r in rows(store_a) if r["method"] == "dm" and r["seed"] == 0)
    path = out / "sets" / f"{dm['distill_key']}.safetensors"
    loud = [a for a in TINY if a != "--quiet"]
    res = ddb("run", "--methods", f"file:{path}", "--datasets", "digits", "--seeds", "0",
              "--store", str(tmp_path / "C" / "db.sqlite"), *loud)
    assert res.code == 0, res.err
    assert "images normalized (declared in the file)" in res.err
    (row,) = rows(tmp_path / "C" / "db.sqlite")
    # the same images, seed and protocol: the same network, the same accuracy
    assert row["status"] == "ok" and row["accuracy"] == pytest.approx(dm["accuracy"])


def _missing_results(out: Path) -> None:
    (out / "results.json").unlink()


def _edit(change):
    def apply(out: Path) -> None:
        doc = json.loads((out / "results.json").read_text())
        change(doc, out)
        (out / "results.json").write_text(json.dumps(doc))
    return apply


def _truncate(out: Path, rehash: bool = False) -> str:
    path = sorted((out / "sets").glob("*.safetensors"))[0]
    path.write_bytes(path.read_bytes()[:-100])
    if rehash:
        _edit(lambda doc, _: doc["files"].update({f"sets/{path.name}": hashlib.sha256(path.read_bytes()).hexdigest()}))(out)
    return path.name


BAD_FOLDERS = {
    "missing results.json": (_missing_results, ["results.json: missing"]),
    "wrong format version": (_edit(lambda doc, _: doc.update(format="ddbench-export/2")),
                             ["results.json: format: 'ddbench-export/2'; this ddbench reads 'ddbench-export/1'"]),
    "truncated set file": (_truncate, [".safetensors: sha256 differs from", "damaged or changed"]),
    "truncated set, hash updated": (lambda out: _truncate(out, rehash=True), [".safetensors: cannot be read"]),
    "accuracy not a number": (_edit(lambda doc, _: doc["results"][2].update(accuracy="high")),
                              ["results.json: results[2].accuracy: expected real"]),
    "key that is a path": (_edit(lambda doc, _: doc["synsets"][0].update(distill_key="../../x")),
                           ["results.json: synsets[0].distill_key: '../../x' is not a key"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folder_is_refused_and_no_store_is_touched(case, ddb, store_a, tmp_path):
    out = export(ddb, store_a, tmp_path / "share")
    damage, parts = BAD_FOLDERS[case]
    damage(out)
    before = files_digest(store_a.parent)
    for target in (store_a, tmp_path / "B" / "db.sqlite"):
        one_line_error(ddb("import", str(out), "--store", str(target)), str(out), *parts)
    assert files_digest(store_a.parent) == before
    assert not (tmp_path / "B").exists()


def test_unknown_or_ambiguous_run_is_refused(ddb, store_a, tmp_path):
    rid = run_id(store_a)
    other = rid[:2] + ("0" if rid[2] != "0" else "1") * (len(rid) - 2)
    with closing(sqlite3.connect(store_a)) as db, db:
        db.execute("INSERT INTO runs (run_id, started) VALUES (?, 0)", (other,))
    before = files_digest(store_a.parent)
    res = ddb("export", "ffffff", str(tmp_path / "share"), "--store", str(store_a))
    one_line_error(res, "run 'ffffff' matches no run; recent runs: ", rid, other)
    res = ddb("export", rid[:2], str(tmp_path / "share"), "--store", str(store_a))
    one_line_error(res, f"run {rid[:2]!r} matches 2 runs; recent runs: ")
    assert not (tmp_path / "share").exists() and not list(tmp_path.glob("share.tmp-*"))
    assert files_digest(store_a.parent) == before
