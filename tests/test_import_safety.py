"""``ddbench import`` takes nothing a fresh run would not have written: every row, key,
reference and file of a folder is checked, conflicts refuse the whole import with their
list, and a refused import leaves every store byte for byte as it was."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import rows
from test_share import db_digest, files_digest, one_line_error, run_id

from ddbench.keys import digest

#: two random sets (nothing to distill) evaluated once each: the cheapest run with set files
RUN = ["run", "--methods", "random", "--datasets", "digits", "--ipc", "1", "--seeds", "0,1",
       "--set", "eval.epochs=2", "--set", "eval.num_eval=1", "--quiet"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Store ``A/db.sqlite`` holding the tiny run, and its export ``share``, made once."""
    from ddbench.cli import main

    root = tmp_path_factory.mktemp("import-safety")
    store = root / "A" / "db.sqlite"
    with pytest.MonkeyPatch.context() as mp:  # the isolation of conftest's autouse fixture
        mp.setenv("DDBENCH_PLUGINS", os.environ.get("DDBENCH_TEST_PLUGINS", ""))
        mp.delenv("DDBENCH_DATA", raising=False)
        mp.setenv("DDBENCH_COMPILE", "off")
        mp.chdir(root)
        for args in ([*RUN, "--store", str(store)], ["export", "RUN", str(root / "share"), "--store", str(store)]):
            try:
                main([run_id(store) if a == "RUN" else a for a in args])
            except SystemExit as exc:
                assert not exc.code
    return root


@pytest.fixture
def folders(made, tmp_path) -> tuple[Path, Path]:
    """A copy of the store and of its exported folder: (store, folder)."""
    shutil.copytree(made / "A", tmp_path / "A")
    shutil.copytree(made / "share", tmp_path / "share")
    return tmp_path / "A" / "db.sqlite", tmp_path / "share"


def load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def save(out: Path, doc: dict) -> None:
    (out / "results.json").write_text(json.dumps(doc))


def edit(change):
    def apply(out: Path) -> None:
        doc = load(out)
        change(doc)
        save(out, doc)
    return apply


def text_edit(change):
    def apply(out: Path) -> None:
        path = out / "results.json"
        path.write_bytes(change(path.read_text()))
    return apply


def set_of(doc: dict, i: int) -> int:
    """The index in ``synsets`` of result ``i``'s set."""
    key = doc["results"][i]["distill_key"]
    return next(j for j, s in enumerate(doc["synsets"]) if s["distill_key"] == key)


def cell_key(row: dict) -> str:
    """The key the plan gives a cell (``ddbench.plan.jobs``), from a row's own fields."""
    return digest({"job": row["distill_key"], "model": row["model"], "model_params": json.loads(row["model_params"]),
                   "protocol": row["protocol_hash"], "eval_index": row["eval_index"]})


def rekey(doc: dict, i: int, **fields) -> None:
    """Change result ``i``'s fields and give it (and ``cells``) the key they compute to."""
    row = doc["results"][i]
    old = row["cell_key"]
    row.update(fields)
    row["cell_key"] = cell_key(row)
    doc["cells"] = [row["cell_key"] if c == old else c for c in doc["cells"]]


def set_file(out: Path, ext: str = "safetensors") -> Path:
    return sorted((out / "sets").glob(f"*.{ext}"))[0]


def rehash(out: Path) -> None:
    from ddbench.storage.atomic import content_hash

    doc = load(out)
    doc["files"] = {rel: content_hash(out / rel) for rel in doc["files"]}
    save(out, doc)


def _link_set_file_outside(out: Path) -> None:
    path = set_file(out)
    outside = out.parent / "elsewhere.safetensors"
    shutil.copyfile(path, outside)  # the same bytes: only the link gives it away
    path.unlink()
    path.symlink_to(outside)


def _link_sets_folder_outside(out: Path) -> None:
    (out / "sets").rename(out.parent / "elsewhere")
    (out / "sets").symlink_to(out.parent / "elsewhere")


def _link_results_outside(out: Path) -> None:
    (out / "results.json").rename(out.parent / "elsewhere.json")
    (out / "results.json").symlink_to(out.parent / "elsewhere.json")


def _huge(out: Path) -> None:
    with open(out / "results.json", "r+b") as f:  # sparse: no disk is used
        f.truncate(256 * 2**20 + 1)


def _not_png(out: Path) -> None:
    set_file(out, "png").write_bytes(b"GIF89a" + bytes(20))
    rehash(out)


def _swap_sets(out: Path) -> None:
    a, b = sorted((out / "sets").glob("*.safetensors"))
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)
    rehash(out)


def _deep(levels: int):
    return text_edit(lambda t: t.replace('"statistics": {', '"statistics": {"x": ' + "[" * levels + "]" * levels + ", ", 1).encode())


def _trace(points):
    def change(doc):
        doc["traces"][doc["synsets"][0]["distill_key"]] = {"mi": points}
    return change


NAN, INF = float("nan"), float("inf")
BIG = 2**70

#: case -> (damage to the exported folder, parts of the one-line error; both stores refuse)
BAD = {
    # values a fresh run never writes
    "accuracy NaN": (edit(lambda d: d["results"][0].update(accuracy=NAN)),
                     ["results[0].accuracy: nan is not an accuracy (a finite number in [0, 1])"]),
    "accuracy infinite": (edit(lambda d: d["results"][1].update(accuracy=INF)), ["results[1].accuracy: inf is not an accuracy"]),
    "accuracy negative": (edit(lambda d: d["results"][0].update(accuracy=-0.25)), ["results[0].accuracy: -0.25 is not an accuracy"]),
    "accuracy above 1": (edit(lambda d: d["results"][0].update(accuracy=1.5)), ["results[0].accuracy: 1.5 is not an accuracy"]),
    "accuracy of a failed row": (edit(lambda d: d["results"][0].update(status="failed")),
                                 ["results[0].accuracy: ", "a failed row has none"]),
    "accuracy missing on an ok row": (edit(lambda d: d["results"][0].update(accuracy=None)),
                                      ["results[0].accuracy: missing (null)"]),
    "unknown result status": (edit(lambda d: d["results"][0].update(status="great")),
                              ["results[0].status: 'great' is not a status; expected one of: failed, ok"]),
    "unknown set status": (edit(lambda d: d["synsets"][1].update(status="OK")),
                           ["synsets[1].status: 'OK' is not a status; expected one of: failed, ok"]),
    "unknown run status": (edit(lambda d: d["run"].update(status="done")),
                           ["run.status: 'done' is not a status; expected one of: ", "finished, interrupted, running"]),
    "seconds NaN": (edit(lambda d: d["results"][0].update(seconds=NAN)),
                    ["results[0].seconds: nan is out of range; expected a finite number >= 0"]),
    "created negative": (edit(lambda d: d["synsets"][0].update(created=-1.0)), ["synsets[0].created: -1.0 is out of range"]),
    "timing infinite": (edit(lambda d: d["run"].update(finished=INF)), ["run.finished: inf is out of range"]),
    # integers SQLite cannot hold, or that no run plans
    "seed beyond 64 bits": (edit(lambda d: d["results"][0].update(seed=BIG)),
                            [f"results[0].seed: {BIG} is out of range; expected an integer in [0, {2**63 - 1}]"]),
    "ipc beyond 64 bits": (edit(lambda d: d["synsets"][0].update(ipc=-BIG)), [f"synsets[0].ipc: {-BIG} is out of range"]),
    "ipc zero": (edit(lambda d: d["synsets"][0].update(ipc=0)), ["synsets[0].ipc: 0 is out of range; expected an integer in [1, "]),
    "accuracy beyond 64 bits": (edit(lambda d: d["results"][0].update(accuracy=BIG)), [f"results[0].accuracy: {BIG} is not an accuracy"]),
    "timing beyond 64 bits": (edit(lambda d: d["results"][0].update(seconds=BIG)), [f"results[0].seconds: {BIG} is out of range"]),
    "trace step beyond 64 bits": (edit(_trace([[BIG, 0.5]])), ["]['mi'][0]: step ", "is out of range"]),
    "trace value NaN": (edit(_trace([[0, NAN]])), ["]['mi'][0]: value nan is not a number"]),
    "trace steps repeated": (edit(_trace([[1, 0.5], [1, 0.6]])), ["]['mi'][1]: step 1 does not follow step 1"]),
    "trace not pairs": (edit(_trace([[1, 0.5, 2]])), ["]['mi'][0]: expected [step, value]"]),
    # wrong types and nulls where a value is required
    "results not an array": (edit(lambda d: d.update(results={})), ["results: missing or not a JSON array"]),
    "run not an object": (edit(lambda d: d.update(run=[])), ["run: missing or not a JSON object"]),
    "accuracy a string": (edit(lambda d: d["results"][0].update(accuracy="high")), ['results[0].accuracy: expected real, found "high"']),
    "accuracy a boolean": (edit(lambda d: d["results"][0].update(accuracy=True)), ["results[0].accuracy: expected real, found true"]),
    "ipc a string": (edit(lambda d: d["results"][0].update(ipc="1")), ['results[0].ipc: expected integer, found "1"']),
    "result row not an object": (edit(lambda d: d["results"].append(3)), ["results[2]: expected a JSON object"]),
    "status null": (edit(lambda d: d["results"][1].update(status=None)), ["results[1].status: missing (null); ddbench always writes it"]),
    "set key null": (edit(lambda d: d["results"][0].update(distill_key=None)), ["results[0].distill_key: missing (null)"]),
    "run start null": (edit(lambda d: d["run"].update(started=None)), ["run.started: missing (null)"]),
    "params not JSON": (edit(lambda d: d["results"][0].update(params="{bad")), ["results[0].params: not a JSON object ('{bad')"]),
    "config a JSON array": (edit(lambda d: d["run"].update(config="[1]")), ["run.config: not a JSON object ('[1]')"]),
    "sha256 not text": (edit(lambda d: d["files"].update({next(iter(d["files"])): 5})),
                        ["files['sets/", "expected a sha256 (64 hex digits), found 5"]),
    # keys: integer-like, path-like, or not what the row's own fields compute to
    "cell key an integer": (edit(lambda d: d["results"][0].update(cell_key=123)), ["results[0].cell_key: expected text, found 123"]),
    "cell key list of integers": (edit(lambda d: d.update(cells=[1, 2])), ["cells[0]: 1 is not a key"]),
    "run id a path": (edit(lambda d: d["run"].update(run_id="../x")),
                      ["run.run_id: '../x' is not a key; expected 12 hex digits"]),
    "set key integer-like": (edit(lambda d: d["synsets"][1].update(distill_key="123")),
                             ["synsets[1].distill_key: '123' is not a key; expected 20 hex digits"]),
    "cell key integer-like": (edit(lambda d: d["cells"].append("7")), ["cells[2]: '7' is not a key"]),
    "cell key not recomputed": (edit(lambda d: d["results"][0].update(eval_index=1)),
                                ["results[0].cell_key: ", "is not the key of the row's fields (distill_key, model, "
                                 "model_params, protocol_hash, eval_index give "]),
    "cell key of another cell": (edit(lambda d: d["results"][0].update(cell_key=d["cells"][1])),
                                 ["results[0].cell_key: ", "is not the key of the row's fields"]),
    "result not among the run's cells": (edit(lambda d: d.update(cells=d["cells"][:1])),
                                         ["results[1].cell_key: ", "is not among cells"]),
    "set key names no set": (edit(lambda d: rekey(d, 0, distill_key="0" * 20)),
                             [f"results[0].distill_key: {'0' * 20!r} names no synthetic set in the folder or in the store"]),
    "row disagrees with its set": (edit(lambda d: d["results"][0].update(ipc=2)),
                                   ["results[0].ipc: 2, but its synthetic set ", " has 1"]),
    "trace of no set": (edit(lambda d: d["traces"].update({"7": {}})), ["traces['7']: names no synthetic set listed under synsets"]),
    # the file itself
    "not UTF-8": (text_edit(lambda t: t.replace('"random"', '"rand\xe9m"').encode("latin-1")),
                  ["results.json: not UTF-8 text (byte 0xe9 at offset "]),
    "lone surrogate": (text_edit(lambda t: t.replace('"digits"', '"\\ud800"').encode()),
                       [".dataset: '\\ud800' is not text (a lone surrogate)"]),
    "nested deeper than the parser": (_deep(100_000), ["results.json: nested deeper than 32 levels"]),
    "nested 40 levels": (_deep(40), ["results.json: nested deeper than 32 levels"]),
    "repeated key": (text_edit(lambda t: t.replace('"accuracy": ', '"accuracy": 0.5, "accuracy": ', 1).encode()),
                     ["results.json: an object repeats the key 'accuracy'"]),
    "integer of 5000 digits": (text_edit(lambda t: t.replace('"seed": 0', '"seed": ' + "7" * 5000, 1).encode()),
                               ["results.json: an integer of 5000 digits; integers are at most 64 bits"]),
    "larger than 256 MiB": (_huge, [f"results.json: {256 * 2**20 + 1} bytes; an export's results.json is at most 256 MiB"]),
    # files: links out of the folder, other content behind a name
    "set file a symlink": (_link_set_file_outside, [".safetensors: a symbolic link; an export folder holds its own "
                                                    "files and none is followed"]),
    "sets folder a symlink": (_link_sets_folder_outside, ["/sets: a symbolic link"]),
    "results.json a symlink": (_link_results_outside, ["results.json: a symbolic link"]),
    "grid not a PNG": (_not_png, [".png: not a PNG image"]),
    "set files swapped": (_swap_sets, [".safetensors: declares distill_key ", "not the key it is listed under"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_folder_is_refused_in_one_line_and_no_store_changes(case, ddb, folders, tmp_path):
    store_a, out = folders
    damage, parts = BAD[case]
    damage(out)
    before = files_digest(store_a.parent)
    for target in (store_a, tmp_path / "B" / "db.sqlite"):
        one_line_error(ddb("import", str(out), "--store", str(target)), str(out), *parts)
    assert files_digest(store_a.parent) == before
    assert not (tmp_path / "B").exists()


def test_a_changed_accuracy_conflicts_with_the_stored_row(ddb, folders, tmp_path):
    store_a, out = folders
    doc = load(out)
    stored = {r["cell_key"]: r["accuracy"] for r in rows(store_a)}
    for r in doc["results"]:
        r["accuracy"] = 0.5
    doc["run"]["command"] = "ddbench run --methods dm"
    save(out, doc)
    before = files_digest(store_a.parent)
    line = one_line_error(ddb("import", str(out), "--store", str(store_a)), str(out / "results.json"),
                          "3 row(s) conflict with the store, nothing imported: ",
                          f"run (run_id {run_id(store_a)!r}): command 'ddbench run --methods dm' vs stored 'ddbench run --methods random ")
    for key, acc in stored.items():
        assert f"(cell_key {key!r}): accuracy 0.5 vs stored {acc!r}" in line
    assert files_digest(store_a.parent) == before
    # a store without those rows takes the folder: nothing conflicts there
    res = ddb("import", str(out), "--store", str(tmp_path / "B" / "db.sqlite"))
    assert res.code == 0, res.err
    assert {r["accuracy"] for r in rows(tmp_path / "B" / "db.sqlite")} == {0.5}


def test_rows_conflicting_inside_the_folder_are_listed_and_truncated(ddb, folders, tmp_path):
    store_a, out = folders
    doc = load(out)
    first = doc["results"][0]
    doc["results"] += [{**first, "accuracy": round(0.1 * i, 1)} for i in range(1, 9)]
    doc["results"].append(dict(first))  # an exact duplicate is no conflict
    save(out, doc)
    before = files_digest(store_a.parent)
    for target in (store_a, tmp_path / "B" / "db.sqlite"):
        line = one_line_error(ddb("import", str(out), "--store", str(target)),
                              "8 row(s) conflict within the folder, nothing imported: ",
                              f"results[2] (cell_key {first['cell_key']!r}): accuracy 0.1 vs {first['accuracy']!r} in results[0]",
                              "; and 3 more")
        assert "results[7]" not in line and len(line) < 1000
    assert files_digest(store_a.parent) == before
    assert not (tmp_path / "B").exists()


def test_an_exact_duplicate_row_is_taken_once(ddb, folders, tmp_path):
    _, out = folders
    doc = load(out)
    doc["results"].append(dict(doc["results"][0]))
    doc["synsets"].append(dict(doc["synsets"][0]))
    save(out, doc)
    res = ddb("import", str(out), "--store", str(tmp_path / "B" / "db.sqlite"))
    assert res.code == 0, res.err
    assert res.out.strip() == "imported 2 cell(s), 2 synthetic set(s); 0 cell(s) already stored"


def test_a_set_stored_already_need_not_travel(ddb, folders, tmp_path):
    """A result row's set may be in the store rather than the folder, never nowhere."""
    store_a, out = folders
    doc = load(out)
    key = doc["results"][0]["distill_key"]
    doc["synsets"] = [s for s in doc["synsets"] if s["distill_key"] != key]
    del doc["traces"][key]
    doc["files"] = {rel: sha for rel, sha in doc["files"].items() if key not in rel}
    save(out, doc)
    for p in (out / "sets").glob(f"{key}.*"):
        p.unlink()
    store_b = tmp_path / "B" / "db.sqlite"
    one_line_error(ddb("import", str(out), "--store", str(store_b)),
                   f"results[0].distill_key: {key!r} names no synthetic set in the folder or in the store")
    assert not store_b.parent.exists()
    before = db_digest(store_a)
    res = ddb("import", str(out), "--store", str(store_a))
    assert res.code == 0, res.err
    assert res.out.strip() == "imported 0 cell(s), 0 synthetic set(s); 2 cell(s) already stored"
    assert db_digest(store_a) == before


def test_a_stored_set_that_disagrees_is_refused(ddb, folders, tmp_path):
    store_a, out = folders
    doc = load(out)
    key = doc["results"][0]["distill_key"]
    doc["synsets"] = [s for s in doc["synsets"] if s["distill_key"] != key]
    del doc["traces"][key]
    doc["files"] = {rel: sha for rel, sha in doc["files"].items() if key not in rel}
    doc["results"][0]["seed"] = 7
    save(out, doc)
    before = files_digest(store_a.parent)
    one_line_error(ddb("import", str(out), "--store", str(store_a)),
                   f"results[0].seed: 7, but its synthetic set {key!r} (stored) has 0")
    assert files_digest(store_a.parent) == before


def test_a_failed_row_as_the_runner_writes_it_is_taken(ddb, folders, tmp_path):
    _, out = folders
    doc = load(out)
    doc["results"][0].update(status="failed", accuracy=None, error="RuntimeError: diverged")
    doc["synsets"][0].update(num_classes=None)  # an older row: no class count
    doc["statistics"]["cells"][0]["ci_low"] = float("nan")  # not stored: a report may hold NaN
    save(out, doc)
    store_b = tmp_path / "B" / "db.sqlite"
    res = ddb("import", str(out), "--store", str(store_b))
    assert res.code == 0, res.err
    assert sorted(r["status"] for r in rows(store_b)) == ["failed", "ok"]
    res = ddb("report", "--store", str(store_b))
    assert res.code == 0, res.err


def test_a_refusal_that_read_an_older_store_leaves_it_unmigrated(ddb, folders, tmp_path):
    """The store is read as a reader reads it: no new columns, no WAL switch, no files beside it."""
    _, out = folders
    edit(lambda d: rekey(d, 0, distill_key="0" * 20))(out)
    old = tmp_path / "old" / "store.sqlite"
    old.parent.mkdir()
    shutil.copyfile(Path(__file__).parent / "data" / "store-main-2e234c3.sqlite", old)
    before = files_digest(old.parent)
    one_line_error(ddb("import", str(out), "--store", str(old)), "names no synthetic set in the folder or in the store")
    assert files_digest(old.parent) == before and sorted(p.name for p in old.parent.iterdir()) == ["store.sqlite"]
