"""Executors on their real engines: local worker processes, a Ray cluster started here on
loopback, submitit's local cluster for the Slurm path. Each gives the local executor's
numbers for the same command; a worker that dies costs only its own job's cells, which the
next run computes; missing extras and bad options are one-line errors."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, rows

from ddbench.runtime import worker
from ddbench.storage.records import ResultRow
from ddbench.storage.store import Store

#: the tables as the first stores were created, before columns were added to the records
FIRST_SCHEMA = """
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

SWEEP = ["run", "--methods", "random,dm", "--datasets", "digits", "--ipc", "1", "--seeds", "0,1", *TINY]

#: a distiller that kills its own process (SIGKILL, no cleanup) in the first ipc=2 job that
#: finds the flag file beside its module, removing the flag first: exactly one job dies,
#: once (a file, not an environment variable: Ray's workers do not inherit the driver's)
KILLER = '''
import os
import signal

import ddbench


class Killer(ddbench.Distiller):
    """Random real images; kills its worker once (when kill-once exists beside this file)."""
    name = "killer"

    def distill(self, ctx):
        flag = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill-once")
        if ctx.ipc == 2 and os.path.exists(flag):
            os.remove(flag)
            os.kill(os.getpid(), signal.SIGKILL)
        from ddbench.builtins.distillers.random import sample_real
        return sample_real(ctx, ctx.generator())


@ddbench.hookimpl
def register_distillers(register):
    register(Killer)
'''
KILL_SWEEP = ["run", "--methods", "random,killer", "--ipc", "1,2", "--seeds", "0,1", *TINY]


def accuracies(store: Path) -> dict:
    got = rows(store)
    assert got and all(r["status"] == "ok" for r in got), [r["error"] for r in got]
    return {(r["method"], r["ipc"], r["seed"], r["model"], r["eval_index"]): r["accuracy"] for r in got}


_reference: dict = {}


def local_reference(ddb, tmp_path) -> dict:
    """The local (in-process) executor's accuracies for SWEEP, computed once per session."""
    if "acc" not in _reference:
        store = tmp_path / "local" / "r.sqlite"
        res = ddb(*SWEEP, "--store", str(store))
        assert res.code == 0, res.err
        _reference["acc"] = accuracies(store)
        assert len({r["worker"] for r in rows(store)}) == 1  # all in this process
    return _reference["acc"]


def test_jobs_2_equals_local_and_records_cost(ddb, tmp_path):
    expected = local_reference(ddb, tmp_path)
    store = tmp_path / "jobs" / "r.sqlite"
    res = ddb(*SWEEP, "--store", str(store), "--jobs", "2")
    assert res.code == 0, res.err
    assert accuracies(store) == expected  # exactly: same seeds, same threads per process
    got = rows(store)
    assert len({r["worker"] for r in got}) == 2  # two worker processes, neither the driver
    assert f":{os.getpid()}" not in "".join(r["worker"] for r in got)
    assert all(r["cpu_seconds"] > 0 and r["seconds"] > 0 and r["peak_mem_mb"] > 0 for r in got)
    assert all(r["device"].startswith("cpu") for r in got)
    db = sqlite3.connect(store)
    sets = db.execute("SELECT method, cpu_seconds, seconds_per_iter, worker FROM synsets").fetchall()
    db.close()
    assert len(sets) == 4 and all(cpu > 0 and w for _, cpu, _, w in sets)
    assert all(spi > 0 for m, _, spi, _ in sets if m == "dm")
    # the cost table reads those columns, and the number of classes from the stored sets
    rep = ddb("report", "--store", str(store), "--cost")
    assert rep.code == 0, rep.err
    cost = rep.out[rep.out.index("distillation cost"):].splitlines()
    header = cost[1].split()
    assert header[:8] == ["method", "dataset", "classes", "ipc", "s/iter", "wall", "s", "cpu"]
    dm = next(line.split() for line in cost if line.startswith("dm "))
    assert dm[1:4] == ["digits", "10", "1"] and float(dm[4]) > 0 and float(dm[5]) > 0 and float(dm[6]) > 0 and dm[9] == "cpu"


def arm_killer(fake_plugin, tmp_path) -> Path:
    module = fake_plugin("killer", KILLER)
    flag = tmp_path / "site" / "kill-once"  # beside fake_killer.py (conftest's fake_plugin)
    assert (flag.parent / f"{module}.py").exists()
    flag.touch()
    return flag


def test_killed_worker_loses_nothing_stored_and_the_rerun_completes(ddb, tmp_path, fake_plugin):
    flag = arm_killer(fake_plugin, tmp_path)
    store = tmp_path / "r.sqlite"
    res = ddb(*KILL_SWEEP, "--store", str(store), "--jobs", "2")
    assert res.code == 1, res.err  # a dead worker fails its cells (exit 1), not the whole sweep
    assert not flag.exists()
    first = {r["cell_key"]: r for r in rows(store)}
    assert len(first) == 8  # 2 methods x 2 ipc x 2 seeds, all recorded
    failed = [r for r in first.values() if r["status"] != "ok"]
    assert len(failed) == 1 and failed[0]["method"] == "killer" and failed[0]["ipc"] == 2
    assert "worker process" in failed[0]["error"] and "killed by SIGKILL" in failed[0]["error"]
    assert "1 failed" in res.out
    res = ddb(*KILL_SWEEP, "--store", str(store), "--jobs", "2")
    assert res.code == 0, res.err
    assert "1 evaluation(s) run, 7 already stored, 0 failed" in res.out
    second = {r["cell_key"]: r for r in rows(store)}
    assert all(r["status"] == "ok" for r in second.values())
    for key, r in first.items():  # what the first run stored is untouched
        if r["status"] == "ok":
            assert (second[key]["run_id"], second[key]["created"]) == (r["run_id"], r["created"])


def test_missing_extra_is_one_line_exit_2_nothing_written(ddb, tmp_path, monkeypatch):
    for executor, module in (("ray", "ray"), ("slurm", "submitit")):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
        store = tmp_path / executor / "r.sqlite"
        res = ddb("run", "--executor", executor, "--store", str(store), *TINY)
        assert res.code == 2 and res.err.count("\n") == 1, res.err
        assert res.err == (f"ddbench: error: executor {executor!r} needs the {module!r} package, which is "
                           f"not installed; install it with: pip install 'ddbench[{executor}]'\n")
        assert not store.parent.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--address", "10.0.0.1:6379"], "--address is not an option of executor 'local'"),
        (["--executor", "slurm", "--address", "x"], "--address is not an option of executor 'slurm'"),
        (["--jobs", "0"], "Invalid value for '--jobs'"),
        (["--set", "local.jobs=0"], "invalid value 0 for local.jobs: must be >= 1"),
        (["--set", "local.jobs=two"], "invalid value 'two' for local.jobs: expected int"),
        (["--executor", "ray", "--set", "ray.num_cpus=0"], "invalid value 0.0 for ray.num_cpus: must be > 0"),
        (["--executor", "slurm", "--set", "slurm.cluster=pbs"], "invalid value 'pbs' for slurm.cluster"),
    ],
)
def test_bad_executor_options_are_one_line_errors(ddb, tmp_path, args, message):
    store = tmp_path / "results" / "r.sqlite"
    res = ddb("run", "--store", str(store), *TINY, *args)
    assert res.code == 2 and message in res.err, res.err
    assert not store.parent.exists()


def test_store_migration_keeps_an_old_store_readable(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(FIRST_SCHEMA)
    assert "cpu_seconds" not in {r[1] for r in db.execute("PRAGMA table_info(results)")}
    db.execute("INSERT INTO results (cell_key, status, accuracy, seconds) VALUES ('k1', 'ok', 0.5, 2.0)")
    db.commit()
    db.close()
    st = Store(path)
    try:
        (row,) = st.results()
        assert row.accuracy == 0.5 and row.cpu_seconds is None and row.worker is None
        assert st.done_cells(["k1"]) == {"k1"}
        st.write_result(ResultRow("k2", status="ok", accuracy=0.7, cpu_seconds=1.5, worker="h:1"))
        assert {r.cell_key: r.cpu_seconds for r in st.results()} == {"k1": None, "k2": 1.5}
    finally:
        st.close()
    Store(path).close()  # migrating twice is a no-op


def test_wire_format_sends_each_large_tensor_once():
    big, small = torch.arange(2**19, dtype=torch.float32), torch.ones(3)  # 2 MiB, 12 bytes
    sent: list = []

    def share(t):
        sent.append(t)
        return ("key", len(sent) - 1)

    blob = worker.dumps({"a": big, "b": [big, small]}, share)
    assert len(blob) < 10_000 and len(sent) == 2 and sent[0] is big
    back = worker.loads(blob, lambda pid: sent[pid[1]].clone())
    assert torch.equal(back["a"], big) and torch.equal(back["b"][1], small)
    assert torch.equal(worker.tensor_from_bytes(worker.tensor_bytes(big)), big)


# --------------------------------------------------------------------------- Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with 2 CPUs (so 2 worker processes run tasks at once), started
    as a foreground ``ray start --block`` process that this fixture owns and stops."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'ddbench[ray]')")
    env = {"RAY_AUTH_MODE": "disabled",  # no token written to ~/.ray for a throwaway cluster
           # Ray replaces 127.0.0.1 by the machine's address unless clusters are "disabled",
           # which on Linux keeps every process of the cluster on loopback
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import ray._private.ray_constants as constants  # noqa: E402 (after the environment)

    mp.setattr(constants, "ENABLE_RAY_CLUSTER", False)  # in case ray was imported before
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ddbray")  # short: Ray's socket paths must fit 107 bytes
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115
    ray_cli = Path(sys.executable).parent / "ray"
    proc = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            if "Ray runtime started" in (Path(temp) / "head.log").read_text():
                break
            time.sleep(0.5)
        else:
            tail = (Path(temp) / "head.log").read_text()[-2000:]
            print(f"ray head did not start (exit {proc.poll()}):\n{tail}")
            pytest.skip(f"a Ray head cannot start here (exit {proc.poll()}); its log ends: {tail[-300:]}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # ray start --block stops its processes on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        mp.undo()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_cluster_equals_local(ddb, tmp_path, ray_head):
    expected = local_reference(ddb, tmp_path)
    store = tmp_path / "ray" / "r.sqlite"
    res = ddb(*SWEEP, "--store", str(store), "--executor", "ray", "--address", ray_head)
    assert res.code == 0, res.err
    assert accuracies(store) == expected
    workers = {r["worker"] for r in rows(store)}
    assert len(workers) >= 2 and f":{os.getpid()}" not in "".join(workers)  # Ray's worker processes


@pytest.mark.slow
def test_ray_lost_worker_fails_its_cells_and_the_rerun_completes(ddb, tmp_path, fake_plugin, ray_head):
    flag = arm_killer(fake_plugin, tmp_path)  # importable on the workers: they get the driver's sys.path
    args = [*KILL_SWEEP, "--executor", "ray", "--address", ray_head]
    store = tmp_path / "r.sqlite"
    res = ddb(*args, "--store", str(store))
    assert res.code == 1, res.err  # its cells failed (stored), the sweep went on
    assert not flag.exists()
    got = rows(store)
    failed = [r for r in got if r["status"] != "ok"]
    assert len(got) == 8 and len(failed) == 1 and failed[0]["ipc"] == 2
    assert failed[0]["error"].startswith("ray task lost: "), failed[0]["error"]
    res = ddb(*args, "--store", str(store))
    assert res.code == 0 and "1 evaluation(s) run, 7 already stored, 0 failed" in res.out, res.out + res.err


# --------------------------------------------------------------------------- Slurm (submitit)


@pytest.mark.slow
def test_slurm_through_submitit_local_equals_local(ddb, tmp_path):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'ddbench[slurm]')")
    expected = local_reference(ddb, tmp_path)
    store = tmp_path / "slurm" / "r.sqlite"
    res = ddb(*SWEEP, "--store", str(store), "--executor", "slurm", "--set", "slurm.cluster=local",
              "--set", "slurm.poll_s=0.2", "--set", "slurm.timeout_min=10")
    assert res.code == 0, res.err
    assert accuracies(store) == expected
    logs = list((store.parent / "slurm").glob("*/*_log.out"))
    assert len(logs) == 4  # one job per synthetic set
    assert not any((store.parent / "slurm" / "shared").iterdir())  # shared tensors cleaned up


@pytest.mark.slow
def test_ray_mtt_reads_the_experts_the_driver_built_once(ddb, tmp_path, ray_head):
    mtt = ["run", "--methods", "mtt", "--ipc", "1", "--seeds", "0,1", "--set", "mtt.iterations=3",
           "--set", "mtt.train_epochs=2", "--set", "mtt.max_start_epoch=1", "--set", "mtt.expert_epochs=1",
           "--set", "mtt.num_experts=2", "--set", "eval.epochs=2", "--set", "eval.num_eval=1", "--quiet"]
    ray_store, local_store = tmp_path / "ray" / "r.sqlite", tmp_path / "local" / "r.sqlite"
    res = ddb(*mtt, "--store", str(ray_store), "--executor", "ray", "--address", ray_head)
    assert res.code == 0, res.err
    assert res.err.count("trained 2 expert(s)") == 1  # by the driver, before the two jobs ran
    res = ddb(*mtt, "--store", str(local_store))  # the same relative data root: experts cached
    assert res.code == 0 and "trained" not in res.err, res.err
    assert accuracies(ray_store) == accuracies(local_store)
    (buffer,) = (tmp_path / "datasets" / ".ddbench-cache" / "experts").iterdir()
    assert len(list(buffer.glob("expert_*.safetensors"))) == 2


@pytest.mark.slow
def test_slurm_lost_job_fails_its_cells_and_the_rerun_completes(ddb, tmp_path, fake_plugin):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'ddbench[slurm]')")
    flag = arm_killer(fake_plugin, tmp_path)
    args = ["run", "--methods", "killer", "--ipc", "1,2", "--seeds", "0", *TINY, "--executor", "slurm",
            "--set", "slurm.cluster=local", "--set", "slurm.poll_s=0.2", "--store", str(tmp_path / "r.sqlite")]
    res = ddb(*args)
    assert res.code == 1, res.err  # its cells failed (stored), the sweep went on
    assert not flag.exists()
    got = rows(tmp_path / "r.sqlite")
    failed = [r for r in got if r["status"] != "ok"]
    assert len(got) == 2 and len(failed) == 1 and failed[0]["ipc"] == 2
    error = failed[0]["error"]
    assert error.startswith("slurm job ") and "has not produced any output" in error and "\n" not in error
    res = ddb(*args)
    assert res.code == 0 and "1 evaluation(s) run, 1 already stored, 0 failed" in res.out, res.out + res.err
