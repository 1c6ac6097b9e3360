"""Checkpoints that know what they belong to: a foreign, damaged or tampered checkpoint is set
aside and the distillation starts over (never a wrong set stored as ok), and a folder the run
cannot write is an error before any work."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import pytest
import torch

from ddbench.context import DistillContext
from ddbench.errors import DDBenchError
from ddbench.storage import checkpoint as C
from ddbench.storage.artifacts import load_synset
from ddbench.storage.store import Store

ITERATIONS = 3
COMMON = ["--datasets", "digits", "--ipc", "1", "--seeds", "0", "--device", "cpu", "--set", "convnet.width=8",
          "--set", "eval.epochs=0", "--set", "eval.num_eval=1", "--quiet"]
ARGS = ["--methods", "dm", *COMMON, "--set", f"dm.iterations={ITERATIONS}", "--set", "dm.batch_real=4"]


# --------------------------------------------------------------------------- the checks


def _live():
    """A distiller's state as freshly built, MTT-like: images, their optimiser, a generator,
    a queue that starts empty, a value not known yet, a count."""
    images = torch.zeros(4, 1, 2, 2, requires_grad=True)
    opt = torch.optim.SGD([images], lr=0.1, momentum=0.5)
    return {"images": images, "optimizer": opt, "generator": torch.Generator(), "order": [],
            "last_loss": None, "count": 0, "betas": (0.9, 0.99)}


def _saved(**change):
    """What a checkpoint of ``_live`` holds after a step, with ``change`` applied."""
    live = _live()
    live["images"].grad = torch.ones_like(live["images"])
    live["optimizer"].step()
    state = C.unpack(*C.pack({**live, "order": [2, 0], "last_loss": 0.5, "count": 3}))
    for path, value in change.items():
        *outer, last = path.split("__")
        node = state
        for key in outer:
            node = node[int(key) if key.isdigit() else key]
        node[int(last) if last.isdigit() else last] = value
    return state


def test_a_state_that_fits_passes_and_restores():
    live, saved = _live(), _saved()
    C.check_fits(live, saved, "state")
    C.restore(live, saved, "test")
    assert live["order"] == [2, 0] and live["count"] == 3 and torch.equal(live["images"], saved["images"])


@pytest.mark.parametrize(("change", "says"), [
    ({"images": torch.zeros(1, 1, 2, 2)}, "state['images'] is a float32 tensor of shape (1, 1, 2, 2), "
                                          "expected a float32 tensor of shape (4, 1, 2, 2)"),
    ({"images": torch.zeros(4, 1, 2, 2, dtype=torch.float64)}, "float64 tensor"),
    ({"images": [1, 2]}, "state['images'] is a list"),
    ({"optimizer__state__0__momentum_buffer": torch.zeros(1, 1, 2, 2)}, "['momentum_buffer'] is a float32"),
    ({"optimizer__state": {7: {"momentum_buffer": torch.zeros(4, 1, 2, 2)}}}, "no such parameter"),
    ({"optimizer__param_groups__0__lr": "fast"}, "['lr'] is a str, expected float"),
    ({"optimizer__param_groups__0__params": [1]}, "holds parameters [1], expected [0]"),
    ({"optimizer__param_groups": []}, "expected a list of 1"),
    ({"generator": torch.zeros(10, dtype=torch.uint8)}, "(generator state) is a uint8 tensor of shape (10,)"),
    ({"order": "20"}, "state['order'] is a str, expected a list"),
    ({"count": 3.5}, "state['count'] is a float, expected int"),
    ({"count": True}, "state['count'] is a bool, expected int"),
    ({"betas": [0.9, 0.99]}, "expected a tuple of 2"),
    ({"extra": 1}, "holds ['betas', 'count', 'extra'"),
])
def test_a_state_that_does_not_fit_is_refused_naming_the_entry(change, says):
    with pytest.raises(DDBenchError) as err:
        C.check_fits(_live(), _saved(**change), "state")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_load_refuses_another_key_a_step_outside_the_budget_and_bad_seconds(tmp_path):
    path = tmp_path / "k.safetensors"
    ck = C.Checkpointer(path, "k", iterations=4)
    for step in (0, 4):  # both ends of the budget
        ck.save(step, {"x": torch.ones(2)})
        assert ck.load().step == step
    cases = {
        "belongs to distillation 'k', not 'other'": lambda: C.Checkpointer(path, "other", iterations=4).load(),
        "at iteration 4, expected 0..3": lambda: C.Checkpointer(path, "k", iterations=3).load(),
        "at iteration 4, expected 0..2": lambda: C.Checkpointer(path, "k", iterations=9).load(iterations=2),
    }
    for says, call in cases.items():
        with pytest.raises(DDBenchError, match=r"\A" + re.escape(str(path))) as err:
            call()
        assert says in str(err.value), str(err.value)
    tensors, meta = C.read(path)
    for field, value, says in [("step", "-1", "at iteration -1, expected 0..4"), ("step", "2.5", "not a ddbench"),
                               ("seconds", "[NaN, 1]", "expected finite"), ("seconds", "[1]", "not a ddbench"),
                               ("state", '{"$d": [[[1], 2]]}', "not a ddbench"), ("state", "[" * 10**5, "not a")]:
        C.write(path, tensors, {**meta, field: value})
        with pytest.raises(DDBenchError) as err:
            ck.load()
        assert says in str(err.value) and "\n" not in str(err.value), (field, value, str(err.value))
    assert C.Checkpointer(tmp_path / "none.safetensors", "k").load() is None


def test_set_aside_keeps_the_file_under_a_name_never_resumed(tmp_path):
    path = tmp_path / "k.safetensors"
    names = set()
    for n in range(2):  # within the same second: two distinct names
        path.write_text(str(n))
        moved = C.Checkpointer(path, "k").set_aside()
        assert not path.exists() and moved.read_text() == str(n) and moved.name.startswith("k.safetensors.rejected-")
        names.add(moved.name)
    assert len(names) == 2
    C.remove(path)  # the runner's clean-up leaves them alone
    assert len(list(tmp_path.iterdir())) == 2


# --------------------------------------------------------------------------- a run


def _stop_after(step: int):
    """``DistillContext.checkpoint`` that interrupts the run once ``step`` is saved."""
    real = DistillContext.checkpoint

    def checkpoint(self, at, state):
        saved = real(self, at, state)
        if at == step:
            raise KeyboardInterrupt
        return saved

    return checkpoint


def _tamper(meta: dict, state: dict, case: str) -> None:
    if case == "step beyond the budget":
        meta["step"] = str(ITERATIONS + 5)
    elif case == "negative step":
        meta["step"] = "-2"
    elif case == "images that broadcast":
        state["distiller"]["images"] = state["distiller"]["images"][:1].clone()
    elif case == "another job's key":
        meta["key"] = "0" * 20
    elif case == "objectives of another method":
        state["context"]["objectives"] = [["mim", {}]]


CASES = ["step beyond the budget", "negative step", "images that broadcast", "another job's key",
         "objectives of another method"]


def test_a_tampered_checkpoint_is_set_aside_and_the_set_equals_a_fresh_one(tmp_path, ddb, monkeypatch):
    assert ddb("run", *ARGS, "--store", "ref/store.sqlite").code == 0
    (ref,) = (tmp_path / "ref" / "artifacts").glob("*.safetensors")
    key = ref.name.removesuffix(".safetensors")

    with monkeypatch.context() as m:  # a genuine checkpoint at iteration 2
        m.setattr(DistillContext, "checkpoint", _stop_after(2))
        assert ddb("run", *ARGS, "--store", "base/store.sqlite", "--checkpoint-every", "1").code == 130
    tensors, meta = C.read(tmp_path / "base" / "checkpoints" / ref.name)

    for case in ["untouched", *CASES]:
        folder = tmp_path / case.replace(" ", "_").replace("'", "")
        m_meta, state = dict(meta), C.unpack(tensors, meta["state"])
        _tamper(m_meta, state, case)
        packed, m_meta["state"] = C.pack(state)
        C.write(folder / "checkpoints" / ref.name, packed, m_meta)

        res = ddb("run", *ARGS, "--store", f"{folder}/store.sqlite")
        assert res.code == 0, (case, res.err)
        if case == "untouched":  # the control: a checkpoint that fits is resumed
            assert "resumed at iteration 2" in res.err and "set aside" not in res.err, res.err
        else:
            (line,) = [ln for ln in res.err.splitlines() if "set aside" in ln]
            assert line.startswith("ddbench: warning: checkpoint ") and "distilling from the start" in line, line
            assert len(list((folder / "checkpoints").glob(f"{ref.name}.rejected-*"))) == 1, case
            assert "resumed" not in res.err, res.err
        got = load_synset(folder / "artifacts" / ref.name)
        assert torch.equal(got.images, load_synset(ref).images), case  # as if never interrupted
        store = Store(folder / "store.sqlite")
        try:
            row = store.synset(key)
            assert row.status == "ok" and row.iterations == ITERATIONS, (case, row)
            assert math.isfinite(row.seconds) and row.seconds >= 0
        finally:
            store.close()
        assert not (folder / "checkpoints" / ref.name).exists()


# --------------------------------------------------------------------------- the folders


@pytest.mark.parametrize(("name", "holds"), [("checkpoints", "checkpoints"), ("artifacts", "synthetic sets")])
def test_a_file_where_a_folder_must_be_is_an_error_before_any_work(tmp_path, ddb, name, holds):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / name).write_text("mine")
    res = ddb("run", "--methods", "random", *COMMON, "--store", "out/store.sqlite")
    assert res.code == 2, res.err
    assert res.err == (f"ddbench: error: 'out/{name}' is not a folder; ddbench keeps its {holds} there, "
                       f"beside the store: move it away or choose another --store\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [name]  # nothing written
    assert (tmp_path / "out" / name).read_text() == "mine"


def test_a_folder_that_cannot_be_written_is_an_error_before_any_work(tmp_path, ddb, monkeypatch):
    """Permission bits do not stop root: the probe's refusal is simulated for that folder."""
    (tmp_path / "out" / "artifacts").mkdir(parents=True)
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).name == "artifacts":
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    res = ddb("run", "--methods", "random", *COMMON, "--store", "out/store.sqlite")
    assert res.code == 2, res.err
    assert res.err == ("ddbench: error: cannot write synthetic sets in 'out/artifacts' (Permission denied): "
                       "make it writable or choose another --store\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["artifacts"]
    assert not list((tmp_path / "out" / "artifacts").iterdir())
