"""Experiment trackers (``run --track``), end to end: a tiny run, then what MLflow and W&B
recorded, read back with their own formats and compared to the SQLite store."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest
from conftest import TINY, rows

from ddbench.storage.store import Store

#: random and dm+mim (a method that records a trace: MIM's estimates per iteration)
RUN = ["run", "--methods", "random,dm+mim", "--datasets", "digits", "--ipc", "1", "--seeds", "0", *TINY]
#: the readable cell names the trackers use
CELLS = {"random": "random/digits/ipc1/seed0/convnet", "dm+mim": "dm_mim/digits/ipc1/seed0/convnet"}
MIM = "dm_mim/digits/ipc1/seed0"


def stored(store: Path):
    """(run row, result rows by method, dm+mim's synset row and trace) from the store."""
    db = Store(store)
    try:
        (run_id,) = db.db.execute("SELECT run_id FROM runs").fetchone()
        run = db.runs([run_id])[0]
        key = db.db.execute("SELECT distill_key FROM synsets WHERE method='dm+mim'").fetchone()[0]
        synset, trace = db.synset(key), db.trace(key)
    finally:
        db.close()
    return run, {r["method"]: r for r in rows(store)}, synset, trace


@pytest.fixture
def mlflow_env(monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow not installed (pip install 'ddbench[mlflow]')")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # ddbench opts in to MLflow's file store itself: record the variable's absence for teardown
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'ddbench[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    for name in ("CONFIG", "CACHE", "DATA"):  # nothing outside tmp
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / f"wandb-{name.lower()}"))


def test_mlflow_records_the_run_as_stored(ddb, tmp_path, mlflow_env):
    from mlflow import MlflowClient

    store = tmp_path / "out" / "r.sqlite"
    res = ddb(*RUN, "--store", str(store), "--track", "mlflow")
    assert res.code == 0, res.err
    assert "warning: tracker" not in res.err
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    run, by_method, synset, trace = stored(store)

    client = MlflowClient((tmp_path / "out" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("ddbench")
    (tracked,) = client.search_runs([experiment.experiment_id])
    rid = tracked.info.run_id
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == run.run_id
    params, tags = tracked.data.params, tracked.data.tags
    assert params["methods"] == "random,dm+mim" and params["ipc"] == "1" and params["seeds"] == "0"
    assert params["set.dm.iterations"] == "3" and params["store"] == str(store)
    assert tags["ddbench.command"] == run.command and tags["ddbench.command"].startswith("ddbench run ")
    assert tags["ddbench.git_rev"] == run.git_rev and tags["ddbench.status"] == "finished"
    assert tags["ddbench.version.torch"] == run.json_field("versions")["torch"]
    assert tracked.data.metrics["cells/ran"] == 2 and tracked.data.metrics["cells/failed"] == 0

    for method, cell in CELLS.items():
        row = by_method[method]
        acc = client.get_metric_history(rid, f"acc/{cell}")
        assert [(m.step, m.value) for m in acc] == [(row["eval_index"], row["accuracy"])]
        assert client.get_metric_history(rid, f"seconds/{cell}")[0].value == row["seconds"]
        assert client.get_metric_history(rid, f"peak_mb/{cell}")[0].value == row["peak_mem_mb"]

    assert set(trace) == {"mim/mi_l1", "mim/mi_l2", "mim/mi_l3", "mim/ceiling"}
    for series, points in trace.items():
        history = client.get_metric_history(rid, f"trace/{MIM}/{series}")
        assert sorted((m.step, m.value) for m in history) == points

    grids = client.list_artifacts(rid, f"grids/{MIM}")
    assert [Path(a.path).name for a in grids] == [Path(synset.grid).name]
    dst = tmp_path / "downloaded"
    dst.mkdir()
    assert (Path(client.download_artifacts(rid, grids[0].path, str(dst))).read_bytes()
            == (store.parent / synset.grid).read_bytes())
    config = json.loads(Path(client.download_artifacts(rid, "config.json", str(dst))).read_text())
    assert config == json.loads(run.config)
    table = json.loads(Path(client.download_artifacts(rid, "results.json", str(dst))).read_text())
    got = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    assert {r["cell_key"]: (r["distill_key"], r["protocol_hash"], r["accuracy"]) for r in got} == {
        r["cell_key"]: (r["distill_key"], r["protocol_hash"], r["accuracy"]) for r in by_method.values()}


def wandb_records(path: Path):
    """The records of a W&B run file (``run-ID.wandb``): W&B's transaction log, LevelDB's log
    format (32 KiB blocks of records with 7-byte headers, a record split FIRST/MIDDLE/LAST
    across blocks) after a 7-byte ``:W&B`` file header; each record a ``wandb_internal``
    protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks = header, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        chunks += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record
            chunks = b""


def items(updates) -> dict:
    return {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}


def test_wandb_offline_records_the_run_as_stored(ddb, tmp_path, wandb_env):
    store = tmp_path / "out" / "r.sqlite"
    res = ddb(*RUN, "--store", str(store), "--track", "wandb")
    assert res.code == 0, res.err
    assert "warning: tracker" not in res.err
    run, by_method, synset, trace = stored(store)

    (folder,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    (runfile,) = folder.glob("run-*.wandb")
    history, summary, exits = [], {}, []
    for record in wandb_records(runfile):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            header, config = record.run, items(record.run.config.update)
        elif kind == "history":
            history.append(items(record.history.item))
        elif kind == "summary":
            summary.update(items(record.summary.update))
        elif kind == "exit":
            exits.append(record.exit.exit_code)
    assert exits == [0]
    assert header.project == "ddbench" and header.display_name == run.run_id and header.notes == run.command
    assert config["methods"] == ["random", "dm+mim"] and config["set"]["dm.iterations"] == "3"
    assert config["ddbench"]["git_rev"] == run.git_rev
    assert config["ddbench"]["versions"] == run.json_field("versions")
    assert json.loads((folder / "files" / "config.json").read_text()) == json.loads(run.config)

    for method, cell in CELLS.items():
        row = by_method[method]
        logged = [h for h in history if f"acc/{cell}" in h]
        assert [(h["eval_index"], h[f"acc/{cell}"], h[f"seconds/{cell}"]) for h in logged] == [
            (row["eval_index"], row["accuracy"], row["seconds"])]
        assert summary[f"acc/{cell}"] == row["accuracy"]
    assert summary["status"] == "finished" and summary["cells/ran"] == 2 and summary["cells/failed"] == 0

    for series, points in trace.items():
        key = f"trace/{MIM}/{series}"
        assert [(h["trace_step"], h[key]) for h in history if key in h] == points

    (image,) = [h[f"grid/{MIM}/path"] for h in history if f"grid/{MIM}/path" in h]
    assert (folder / "files" / image).read_bytes() == (store.parent / synset.grid).read_bytes()
    (tablefile,) = [h["results/path"] for h in history if "results/path" in h]
    table = json.loads((folder / "files" / tablefile).read_text())
    got = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    assert sorted(r["cell_key"] for r in got) == sorted(r["cell_key"] for r in by_method.values())


@pytest.mark.parametrize(("args", "error"), [
    (["--track", "mlflow,nope"], "unknown tracker 'nope'; valid choices: mlflow, wandb"),
    (["--track-uri", "file:///tmp/x"], "--track-uri is MLflow's tracking URI: use it with --track mlflow"),
])
def test_bad_tracker_options_are_one_line_errors_before_anything_is_written(ddb, tmp_path, args, error):
    res = ddb(*RUN, "--store", str(tmp_path / "out" / "r.sqlite"), *args)
    assert res.code == 2
    assert res.err == f"ddbench: error: {error}\n"
    assert not (tmp_path / "out").exists() and sorted(tmp_path.iterdir()) == []


def test_a_missing_tracker_library_names_the_install_command(ddb, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it fails as if not installed
    monkeypatch.delitem(sys.modules, "ddbench.builtins.trackers.wandb", raising=False)
    res = ddb(*RUN, "--store", str(tmp_path / "out" / "r.sqlite"), "--track", "wandb")
    assert res.code == 2
    assert res.err.count("\n") == 1 and res.err.startswith("ddbench: error: tracker 'wandb' needs the wandb package")
    assert "pip install 'ddbench[wandb]'" in res.err
    assert sorted(tmp_path.iterdir()) == []


def test_a_failing_tracker_warns_once_and_the_run_keeps_every_result(ddb, tmp_path, mlflow_env, monkeypatch):
    from mlflow import MlflowClient

    real = MlflowClient.log_batch

    def unreachable(self, run_id, metrics=(), **kwargs):
        if any(m.key.startswith("acc/") for m in metrics):
            raise ConnectionError("tracking server unreachable\n(details)")
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", unreachable)
    store = tmp_path / "out" / "r.sqlite"
    res = ddb(*RUN, "--store", str(store), "--track", "mlflow")
    assert res.code == 0, res.err
    warnings = [line for line in res.err.splitlines() if "tracker" in line]
    assert warnings == ["ddbench: warning: tracker mlflow: ConnectionError: tracking server unreachable "
                        "(tracking stopped for this run; results are stored)"]
    got = rows(store)
    assert len(got) == 2 and all(r["status"] == "ok" for r in got)
    assert "2 evaluation(s) run" in res.out
    # the tracked run is closed as failed, with nothing logged after the failure
    client = MlflowClient((tmp_path / "out" / "mlruns").as_uri())
    (tracked,) = client.search_runs([client.get_experiment_by_name("ddbench").experiment_id])
    assert tracked.info.status == "FAILED"
    assert not any(k.startswith(("acc/", "cells/")) for k in tracked.data.metrics)
    assert "ddbench.status" not in tracked.data.tags


def test_an_unreachable_tracking_server_costs_one_bounded_wait_and_one_warning(ddb, tmp_path, mlflow_env,
                                                                                monkeypatch):
    """A server that does not answer: MLflow's own default is 120 s per request and 7
    retries; ddbench gives it 10 s and none, then one warning, and every result is stored."""
    import socket
    import time

    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "out" / "r.sqlite"
    start = time.perf_counter()
    res = ddb("run", "--methods", "random", "--ipc", "1", "--seeds", "0", *TINY, "--store", str(store),
              "--track", "mlflow", "--track-uri", f"http://127.0.0.1:{port}")
    assert res.code == 0, res.err
    warnings = [line for line in res.err.splitlines() if "warning: tracker mlflow" in line]
    assert len(warnings) == 1 and "results are stored" in warnings[0]
    assert time.perf_counter() - start < 60
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
    assert len(rows(store)) == 1 and rows(store)[0]["status"] == "ok"
