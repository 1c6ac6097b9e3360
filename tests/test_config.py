"""Sweep files: every option of `run` from YAML or TOML, named sweeps, command-line overrides,
--print-config round trips, the resolved config stored with the run, one-line errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import REPO, rows

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))

BASE = """\
methods: [random, dm]
datasets: [digits]
ipc: [1]
seeds: [0, 1]
set:
  eval.epochs: 2
  eval.num_eval: 1
params:
  dm: {iterations: [2, 3]}
"""


def _plan(out: str) -> list[str]:
    """The dry run's rows (method ... key), without the summary line."""
    return [ln for ln in out.splitlines() if ln and not ln.startswith(("method", "---")) and "synthetic set(s)" not in ln]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_the_example_sweep_files_run(ddb, tmp_path, path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--config", str(path), "--sweep", "smoke", "--store", str(store), "--quiet")
    assert res.code == 0, res.err
    got = rows(store)
    assert got and all(r["status"] == "ok" for r in got)
    # the study's own sweep plans on MNIST (its data is not needed to check the file)
    res = ddb("run", "--config", str(path), "--print-config", "--sweep", "mnist")
    assert res.code == 0 and "datasets: [mnist]" in res.out


def test_file_values_command_line_overrides_and_stored_config(ddb, tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(BASE)
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--config", str(cfg), "--seeds", "0", "--set", "dm.iterations=4", "--store", str(store), "--quiet")
    assert res.code == 0, res.err
    got = rows(store)
    assert {r["seed"] for r in got} == {0}  # --seeds wins over the file
    assert {json.loads(r["params"])["dm"]["iterations"] for r in got if r["method"].startswith("dm")} == {4}
    db = sqlite3.connect(store)
    (stored,) = db.execute("SELECT config FROM runs").fetchone()
    db.close()
    stored = json.loads(stored)
    assert stored["seeds"] == [0] and stored["set"] == {"eval.epochs": "2", "eval.num_eval": "1", "dm.iterations": "4"}


def test_print_config_reruns_the_same_cells(ddb, tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(BASE)
    first = ddb("run", "--config", str(cfg), "--ipc", "1", "--print-config")
    assert first.code == 0, first.err
    again = tmp_path / "printed.yaml"
    again.write_text(first.out)
    a = ddb("run", "--config", str(cfg), "--dry-run")
    b = ddb("run", "--config", str(again), "--dry-run")
    assert a.code == b.code == 0
    assert _plan(a.out) == _plan(b.out) and len(_plan(a.out)) == 6  # random + dm x 2 iterations, 2 seeds


def test_toml_and_named_sweeps(ddb, tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('methods = ["random"]\ndatasets = ["digits"]\nipc = [1]\nseeds = [0]\n'
                   '[set]\n"eval.epochs" = 2\n"eval.num_eval" = 1\n'
                   '[sweeps.two]\nseeds = [0, 1]\n[sweeps.one]\n')
    two = ddb("run", "--config", str(cfg), "--sweep", "two", "--dry-run")
    one = ddb("run", "--config", str(cfg), "--sweep", "one", "--dry-run")
    assert two.code == one.code == 0, two.err + one.err
    assert len(_plan(two.out)) == 2 and len(_plan(one.out)) == 1


@pytest.mark.parametrize(("text", "args", "message"), [
    ("methds: [dm]\n", [], "s.yaml: unknown key 'methds'; valid keys: address,"),
    ("ipc: [0]\n", [], "s.yaml: ipc: invalid ipc 0: must be >= 1"),
    ("preset: huge\n", [], "s.yaml: preset: 'huge' is not one of 'small', 'paper'"),
    ("set: {dm.iterations: -5}\n", [], "s.yaml: set.dm.iterations: invalid value -5 for dm.iterations: must be >= 1"),
    ("params: {dmm: {iterations: 5}}\n", [], "s.yaml: params.dmm.iterations: no component is named 'dmm'"),
    ("params: {dm: {iters: 5}}\n", [], "s.yaml: params.dm.iters: 'dm' has no parameter 'iters'; valid: amp,"),
    ("sweeps: {a: {}, b: {}}\n", [], "holds sweeps a, b: choose one with --sweep NAME"),
    ("sweeps: {a: {}}\n", ["--sweep", "c"], "unknown sweep 'c'; valid choices: a"),
    ("methods: [dm\n", [], "s.yaml: not valid YAML"),
    ("download: maybe\n", [], "s.yaml: download: expected true or false, got 'maybe'"),
])
def test_bad_files_are_one_line_errors(ddb, tmp_path, text, args, message):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(text)
    store = tmp_path / "results" / "r.sqlite"
    res = ddb("run", "--config", str(cfg), *args, "--store", str(store))
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.err
    assert not store.parent.exists()


def test_sweep_needs_a_config_and_a_missing_file_is_an_error(ddb, tmp_path):
    res = ddb("run", "--sweep", "a")
    assert res.code == 2 and "--sweep needs --config FILE" in res.err
    res = ddb("run", "--config", str(Path(tmp_path) / "none.yaml"))
    assert res.code == 2 and "cannot read config" in res.err
