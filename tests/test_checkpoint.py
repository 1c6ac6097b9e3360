"""Checkpoints: the file format (exact round trips, no pickle, atomic writes) and resumed
distillations equal to uninterrupted ones, bit for bit, after a real SIGKILL."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ddbench.errors import DDBenchError
from ddbench.storage import checkpoint as C
from ddbench.storage.artifacts import load_synset
from ddbench.storage.store import Store

#: a test plugin objective that adds nothing to the loss; it logs ``<job key> <step>`` of
#: every call to $KILL_LOG and SIGKILLs its own process at step $KILL_AT of a distillation
#: that did not resume from a checkpoint (so each job of a command is killed once)
KILL = '''
import os, signal
from ddbench import hookimpl
from ddbench.components import Objective

class Kill(Objective):
    name = "kill"

    def setup(self, ctx):
        self.key, self.resumed = ctx.checkpointer.key if ctx.checkpointer else "-", False

    def load_state_dict(self, state):
        self.resumed = True

    def loss(self, step):
        if os.environ.get("KILL_LOG"):
            with open(os.environ["KILL_LOG"], "a") as f:
                f.write(f"{self.key} {step.step}\\n")
        if not self.resumed and str(step.step) == os.environ.get("KILL_AT"):
            os.kill(os.getpid(), signal.SIGKILL)
        return step.syn_images.new_zeros(())

@hookimpl
def register_objectives(register):
    register(Kill)
'''

ITERATIONS, KILL_AT = 4, 2
COMMON = ["--datasets", "digits", "--ipc", "1", "--seeds", "0", "--device", "cpu", "--set", "convnet.width=16",
          "--set", "eval.epochs=0", "--set", "eval.num_eval=1", "--quiet"]
#: MINE: an estimator with running statistics to carry over
MIM = ["--set", "mim.estimator=mine"]
METHODS = {
    "dm": ["--set", f"dm.iterations={ITERATIONS}", "--set", "dm.batch_real=16"],
    "dc": ["--set", f"dc.iterations={ITERATIONS}", "--set", "dc.batch_real=16"],
    "mtt": ["--set", f"mtt.iterations={ITERATIONS}", "--set", "mtt.syn_steps=2", "--set", "mtt.batch_real=8",
            "--set", "mtt.num_experts=2", "--set", "mtt.train_epochs=2", "--set", "mtt.max_start_epoch=1",
            "--set", "mtt.expert_epochs=1", "--set", "mtt.expert_images_per_class=20",
            "--set", "mtt.lr_lr=1e-6"],
}


# --------------------------------------------------------------------------- the file


def test_optimizer_generator_and_module_state_round_trip_exactly(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5)
    adam = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.8, 0.9))
    for opt in (sgd, adam):
        for _ in range(2):
            opt.zero_grad()
            net(torch.randn(5, 4)).square().sum().backward()
            opt.step()
    gen = torch.Generator().manual_seed(3)
    torch.randn(7, generator=gen)
    ck = C.Checkpointer(tmp_path / "c.safetensors", "key", every=1)
    ck.save(5, {"sgd": sgd, "adam": adam, "gen": gen, "net": net, "order": [3, 1], "loss": 0.1 + 0.2})

    saved = C.Checkpointer(tmp_path / "c.safetensors", "key").load()
    assert saved.step == 5 and saved.state["order"] == [3, 1] and saved.state["loss"] == 0.1 + 0.2
    for name, opt in (("sgd", sgd), ("adam", adam)):
        ref, got = opt.state_dict(), saved.state[name]
        assert got["param_groups"] == ref["param_groups"]  # betas come back as a tuple
        for i, entry in ref["state"].items():
            assert got["state"][i].keys() == entry.keys()
            for k, v in entry.items():
                assert got["state"][i][k].dtype == v.dtype and torch.equal(got["state"][i][k], v)
    # restored into fresh objects, they continue exactly as the originals
    net2 = torch.nn.Linear(4, 3)
    adam2 = torch.optim.Adam(net2.parameters(), lr=1.0)
    gen2 = torch.Generator()
    live = {"sgd": torch.optim.SGD(net2.parameters(), lr=1.0), "adam": adam2, "gen": gen2, "net": net2,
            "order": [], "loss": None}
    C.restore(live, saved.state, "test")
    assert live["order"] == [3, 1] and torch.equal(torch.randn(4, generator=gen2), torch.randn(4, generator=gen))
    x = torch.randn(5, 4)
    for n, o in ((net, adam), (net2, adam2)):
        o.zero_grad()
        n(x).square().sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters(), strict=True))


class _Boom:
    """Creates a marker file if anything ever unpickles it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickle_in_place_of_a_checkpoint_is_refused_and_not_executed(tmp_path):
    path, marker = tmp_path / "checkpoints" / "key.safetensors", tmp_path / "executed"
    path.parent.mkdir()
    torch.save({"state": _Boom(str(marker))}, tmp_path / "evil.pt")
    os.replace(tmp_path / "evil.pt", path)
    with pytest.raises(DDBenchError) as err:
        C.Checkpointer(path, "key").load()
    assert "is not a ddbench checkpoint" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_an_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    ck = C.Checkpointer(path, "key", every=1)
    ck.save(1, {"x": torch.ones(3)})
    real = C.save_file

    def dies_half_way(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt  # any interruption, not only an Exception

    monkeypatch.setattr(C, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ck.save(2, {"x": torch.full((3,), 2.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]
    saved = C.Checkpointer(path, "key").load()
    assert saved.step == 1 and torch.equal(saved.state["x"], torch.ones(3))
    with pytest.raises(KeyboardInterrupt):  # nothing at all before the first complete write
        C.Checkpointer(tmp_path / "d.safetensors", "key", every=1).save(1, {"x": torch.ones(3)})
    assert not (tmp_path / "d.safetensors").exists()


def test_checkpoints_are_due_by_count_or_by_time():
    ck = C.Checkpointer(Path("unused"), "key", every=3, minutes=0)
    assert [ck.due(s) for s in (1, 2, 3)] == [False, False, True]
    ck = C.Checkpointer(Path("unused"), "key", every=0, minutes=10)
    assert not ck.due(100)
    ck._last_time -= 601
    assert ck.due(1)
    assert not C.Checkpointer(Path("unused"), "key", every=0, minutes=0).due(10**6)
    with pytest.raises(DDBenchError):
        C.CheckpointPolicy(Path("x"), every=-1)


# --------------------------------------------------------------------------- resuming


@contextmanager
def _one_thread():
    """For an in-process reference: float sums depend on the torch thread count, which the
    runs it is compared with get from ``OMP_NUM_THREADS`` (``_cli``) or ``local.threads``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cli(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python -m ddbench ARGS`` in a process of its own (the fake plugin importable)."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path]),
               "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "ddbench", *args], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=300)


def _same_sets(ref: Path, got: Path, n: int) -> None:
    names = sorted(p.name for p in (ref / "artifacts").glob("*.safetensors"))
    assert len(names) == n and names == sorted(p.name for p in (got / "artifacts").glob("*.safetensors"))
    a, b = Store(ref / "store.sqlite"), Store(got / "store.sqlite")
    try:
        for name in names:
            x, y = load_synset(ref / "artifacts" / name), load_synset(got / "artifacts" / name)
            assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels), name
            assert x.lr == y.lr and x.meta == y.meta, name  # MTT's learned lr, its final loss
            key = name.removesuffix(".safetensors")
            assert a.trace(key) == b.trace(key) and a.trace(key), name
            assert b.synset(key).iterations == ITERATIONS
    finally:
        a.close()
        b.close()
    assert not list((got / "checkpoints").iterdir())  # removed once the sets were stored


def _steps(log: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key, step in (line.split() for line in log.read_text().splitlines()):
        out.setdefault(key, []).append(int(step))
    return out


#: each job's steps over the killed run and the resumed one: nothing before the checkpoint
#: is redone, the iteration that the kill cut short is run again
RESUMED_STEPS = [*range(KILL_AT + 1), *range(KILL_AT, ITERATIONS)]


def test_dm_dc_mtt_with_mim_resume_after_sigkill_exactly(tmp_path, fake_plugin, ddb):
    fake_plugin("kill", KILL)
    methods = ["--methods", "dm+mim+kill,dc+mim+kill,mtt+mim+kill"]
    args = [*methods, *COMMON, *MIM, *(a for m in METHODS.values() for a in m)]
    with _one_thread():
        assert ddb("run", *args, "--store", "ref/store.sqlite").code == 0  # uninterrupted, no checkpoints

    killed = ["run", *args, "--store", "run/store.sqlite", "--checkpoint-every", "1"]
    log = tmp_path / "steps.log"
    for job in range(3):  # each run resumes one job, finishes it and is killed in the next
        proc = _cli(tmp_path, killed, KILL_AT=str(KILL_AT), KILL_LOG=str(log))
        assert proc.returncode == -9, proc.stderr[-2000:]
        assert (f"resumed at iteration {KILL_AT}" in proc.stderr) == (job > 0)
        assert len(list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))) == 1
        assert len(list((tmp_path / "run" / "artifacts").glob("*.safetensors"))) == job
    proc = _cli(tmp_path, killed, KILL_AT=str(KILL_AT), KILL_LOG=str(log))
    assert proc.returncode == 0, proc.stderr[-2000:]
    _same_sets(tmp_path / "ref", tmp_path / "run", 3)
    steps = _steps(log)
    assert len(steps) == 3 and all(s == RESUMED_STEPS for s in steps.values()), steps


def test_resume_in_local_worker_processes(tmp_path, fake_plugin, ddb):
    fake_plugin("kill", KILL)
    args = ["--methods", "dm+mim+kill", *COMMON, *MIM, *METHODS["dm"]]
    with _one_thread():
        assert ddb("run", *args, "--store", "ref/store.sqlite").code == 0
    log = tmp_path / "steps.log"
    run = ["run", *args, "--store", "run/store.sqlite", "--jobs", "2", "--set", "local.threads=1",
           "--checkpoint-every", "1"]
    proc = _cli(tmp_path, run, KILL_AT=str(KILL_AT), KILL_LOG=str(log))  # the worker is killed
    assert proc.returncode == 1 and "died (killed by SIGKILL)" in proc.stderr, proc.stderr[-2000:]
    assert len(list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))) == 1
    proc = _cli(tmp_path, run, KILL_AT=str(KILL_AT), KILL_LOG=str(log))
    assert proc.returncode == 0, proc.stderr[-2000:]
    _same_sets(tmp_path / "ref", tmp_path / "run", 1)
    assert list(_steps(log).values()) == [RESUMED_STEPS]


def test_a_bad_checkpoint_is_set_aside_and_the_distillation_starts_over(tmp_path, ddb):
    from ddbench.cli.base import registry
    from ddbench.plan import RunOptions, prepare

    args = ["--methods", "dm", *COMMON, *METHODS["dm"]]
    options = RunOptions(methods=["dm"], datasets=["digits"], ipcs=[1], seeds=[0],
                         sets=["convnet.width=16", "eval.epochs=0", "eval.num_eval=1", f"dm.iterations={ITERATIONS}",
                               "dm.batch_real=16"])
    key = prepare(options, registry()).jobs[0].key
    path, marker = tmp_path / "checkpoints" / f"{key}.safetensors", tmp_path / "executed"
    path.parent.mkdir()
    torch.save(_Boom(str(marker)), path)
    evil = path.read_bytes()
    res = ddb("run", *args, "--store", "store.sqlite")
    assert res.code == 0 and "is not a ddbench checkpoint" in res.err and "set aside" in res.err, res.err
    assert not marker.exists() and not path.exists()  # never unpickled, never resumed
    (aside,) = path.parent.glob(f"{path.name}.rejected-*")  # kept for a look
    assert aside.read_bytes() == evil
