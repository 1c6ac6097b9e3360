"""`ddbench run` end to end through the CLI: plan, store, resume, failures, artifacts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import TINY, rows
from safetensors.torch import load_file

from ddbench.storage.records import ResultRow

FLAKY = '''
import os
import torch
import ddbench

class Flaky(ddbench.Distiller):
    """Fails while $FLAKY_MODE says so: 'raise', 'nan' or 'ok'."""
    name = "flaky"

    def distill(self, ctx):
        mode = os.environ.get("FLAKY_MODE", "ok")
        if mode == "raise":
            raise RuntimeError("flaky distiller exploded")
        if mode == "nan":
            ctx.check_finite(torch.tensor(float("nan")), 7)
        from ddbench.builtins.distillers.random import sample_real
        return sample_real(ctx, ctx.generator())

class Shifty(ddbench.Objective):
    """Pulls the synthetic images towards zero (a toy auxiliary loss)."""
    name = "shrink"
    from dataclasses import dataclass

    @dataclass
    class Params:
        weight: float = 1.0

    def loss(self, step):
        calls.append(step.step)
        feats = step.features(step.syn_images)
        assert len(feats) == 3 and step.real_images.shape[0] > 0
        return step.syn_images.pow(2).mean()  # ddbench scales it by weight()

calls = []
finished = []

@ddbench.hookimpl
def register_distillers(register):
    register(Flaky)

@ddbench.hookimpl
def register_objectives(register):
    register(Shifty)

@ddbench.hookimpl
def cell_finished(record):
    finished.append(record)
'''


def test_default_like_run_stores_every_evaluation_and_resumes(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    args = ["run", "--methods", "random,dm", "--ipc", "1,2", "--seeds", "0,1", "--store", str(store), *TINY]
    res = ddb(*args)
    assert res.code == 0, res.err
    table = res.out
    assert "random" in table and "dm" in table and "digits" in table
    assert "unit of replication: distillation seed" in table
    assert "significance: " in table and "pairwise difference(s)" in table  # 4 cells x 1 pair
    assert "significant at 0.05 after Holm" in table
    got = rows(store)
    # 2 methods x 2 ipc x 2 seeds x 1 model x 1 eval run
    assert len(got) == 8 and all(r["status"] == "ok" for r in got)
    assert all(0 <= r["accuracy"] <= 1 for r in got)
    r = got[0]
    assert r["protocol"] == "ddbench-eval/v1" and '"epochs": 2' in r["protocol_params"]
    assert r["device"].startswith("cpu") and r["peak_mem_mb"] > 0 and r["seconds"] > 0
    assert '"torch"' in r["versions"] and len(r["cell_key"]) == 20

    # artifacts: safetensors (no pickle) and a PNG grid per synthetic set
    db = sqlite3.connect(store)
    synsets = db.execute("SELECT method, ipc, artifact, grid FROM synsets").fetchall()
    assert len(synsets) == 8
    for _method, ipc, artifact, grid in synsets:
        t = load_file(str(store.parent / artifact))
        assert t["images"].shape == (10 * ipc, 1, 8, 8) and t["labels"].dtype == torch.int64
        assert (store.parent / grid).read_bytes()[:4] == b"\x89PNG"

    again = ddb(*args)
    assert again.code == 0
    assert "0 evaluation(s) run, 8 already stored" in again.out
    assert len(rows(store)) == 8
    assert again.out.split("\n\nstore:")[0] == table.split("\n\nstore:")[0]


def test_same_command_gives_the_same_numbers(ddb, tmp_path):
    args = ["run", "--methods", "dm", "--ipc", "1", "--seeds", "3", *TINY]
    assert ddb(*args, "--store", str(tmp_path / "a.sqlite")).code == 0
    assert ddb(*args, "--store", str(tmp_path / "b.sqlite")).code == 0
    a = {r["cell_key"]: r["accuracy"] for r in rows(tmp_path / "a.sqlite")}
    b = {r["cell_key"]: r["accuracy"] for r in rows(tmp_path / "b.sqlite")}
    assert a == b


def test_adding_a_model_later_does_not_redistill(ddb, tmp_path, monkeypatch):
    store = tmp_path / "r.sqlite"
    base = ["run", "--methods", "dm", "--ipc", "1", "--seeds", "0", "--store", str(store), *TINY]
    assert ddb(*base).code == 0
    from ddbench.builtins.distillers.dm import DM

    def boom(self, ctx):
        raise AssertionError("re-distilled")

    monkeypatch.setattr(DM, "distill", boom)
    res = ddb(*base, "--set", "convnet.width=32,128")
    assert res.code == 0, res.err
    # width=128 is the default: that cell is the one already stored, not a new one
    assert "1 evaluation(s) run, 1 already stored" in res.out
    got = rows(store)
    assert sorted(r["model"] for r in got) == ["convnet", "convnet[width=32]"]
    assert all(r["status"] == "ok" for r in got)
    assert len({r["distill_key"] for r in got}) == 1


def test_sweep_axis_and_override(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dm", "--ipc", "1", "--seeds", "0", "--store", str(store),
              "--set", "dm.lr_img=0.5,2", *TINY)
    assert res.code == 0, res.err
    assert "dm[lr_img=0.5]" in res.out and "dm[lr_img=2.0]" in res.out
    got = rows(store)
    assert len(got) == 2 and len({r["distill_key"] for r in got}) == 2
    assert {'"lr_img": 0.5', '"lr_img": 2.0'} == {p for r in got for p in ('"lr_img": 0.5', '"lr_img": 2.0') if p in r["params"]}
    assert all('"iterations": 3' in r["params"] for r in got)


def test_dry_run_prints_plan_and_writes_nothing(ddb, tmp_path):
    store = tmp_path / "sub" / "r.sqlite"
    res = ddb("run", "--dry-run", "--store", str(store))
    assert res.code == 0
    assert "12 synthetic set(s), 24 evaluation cell(s), 0 already stored, 24 to run" in res.out
    assert not store.parent.exists()
    ddb("run", "--methods", "random", "--ipc", "1", "--seeds", "0", "--store", str(store), *TINY)
    res = ddb("run", "--dry-run", "--methods", "random", "--ipc", "1,2", "--seeds", "0",
              "--store", str(store), *TINY)
    assert "2 evaluation cell(s), 1 already stored, 1 to run" in res.out


def test_failed_cells_are_recorded_and_retried(ddb, tmp_path, monkeypatch, fake_plugin):
    mod = fake_plugin("flaky", FLAKY)
    store = tmp_path / "r.sqlite"
    args = ["run", "--methods", "flaky,random", "--ipc", "1", "--seeds", "0,1", "--store", str(store), *TINY]
    monkeypatch.setenv("FLAKY_MODE", "raise")
    res = ddb(*args)
    assert res.code == 1  # a failing method does not stop the sweep, but the exit status says so
    assert ("failed: flaky digits ipc=1 seed=0 (convnet #0): distillation failed: RuntimeError: flaky distiller "
            "exploded") in res.err
    assert "2 cell(s) failed" in res.err.splitlines()[-1]
    got = rows(store)
    failed = [r for r in got if r["status"] == "failed"]
    assert len(failed) == 2 and all("flaky distiller exploded" in r["error"] for r in failed)
    assert all(r["status"] == "ok" for r in got if r["method"] == "random")
    assert "[1 failed]" in res.out or "[2 failed]" in res.out or "-" in res.out

    monkeypatch.setenv("FLAKY_MODE", "nan")
    assert ddb(*args).code == 1
    got = rows(store, "method='flaky'")
    assert len(got) == 2 and all("loss is nan at iteration 7" in r["error"] for r in got)

    monkeypatch.setenv("FLAKY_MODE", "ok")
    res = ddb(*args)
    assert res.code == 0 and "2 evaluation(s) run, 2 already stored, 0 failed" in res.out
    got = rows(store)
    assert len(got) == 4 and all(r["status"] == "ok" for r in got)
    import sys

    finished = sys.modules[mod].finished
    assert len(finished) == 4 + 2 + 2  # the hook receives the typed row as stored
    assert isinstance(finished[-1], ResultRow) and finished[-1].ok and finished[-1].accuracy is not None


def test_objective_attaches_with_the_method_grammar(ddb, tmp_path, fake_plugin):
    import sys

    mod = fake_plugin("flaky", FLAKY)
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dm,dm+shrink", "--ipc", "1", "--seeds", "0", "--store", str(store),
              "--set", "shrink.weight=0.5", *TINY)
    assert res.code == 0, res.err
    assert "dm+shrink" in res.out
    assert sys.modules[mod].calls == [0, 1, 2]
    got = {r["method"]: r for r in rows(store)}
    assert set(got) == {"dm", "dm+shrink"}
    assert '"shrink": {"weight": 0.5}' in got["dm+shrink"]["params"]
    assert got["dm"]["distill_key"] != got["dm+shrink"]["distill_key"]


def test_full_runs_once_per_dataset(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "full", "--ipc", "1,10", "--seeds", "0", "--store", str(store),
              "--set", "full.epochs=1", *TINY)
    assert res.code == 0, res.err
    got = rows(store)
    assert len(got) == 1 and got[0]["ipc"] is None and got[0]["accuracy"] > 0.5
    assert " all " in res.out


def test_set_for_a_component_outside_the_run_warns(ddb, tmp_path):
    res = ddb("run", "--dry-run", "--methods", "random", "--set", "dm.iterations=5", "--store", str(tmp_path / "r"))
    assert res.code == 0
    assert "ddbench: warning: --set dm.* has no effect: 'dm' is not part of this run" in res.err


def test_console_script_and_module_entry_points(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "ddbench", "--version"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.startswith("ddbench, version")
    bad = subprocess.run([sys.executable, "-m", "ddbench", "run", "--methods", "nope"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == "ddbench: error: unknown distiller 'nope'; valid choices: dc, dm, dsa, file, full, mim, mtt, random\n"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "random,nope"], "unknown distiller 'nope'; valid choices: dc, dm, dsa, file, full, mim, mtt, random"),
        (["--methods", "dm+nope"], "unknown objective 'nope'; valid choices: mim"),
        (["--methods", "dm+"], "malformed method 'dm+'"),
        (["--datasets", "digitz"], "unknown dataset 'digitz'; valid choices: cifar10, cifar100, digits"),
        (["--models", "resnet"], "unknown model 'resnet'; valid choices: alexnet, convnet, lenet, mlp, resnet18, timm, vgg11"),
        (["--ipc", "0"], "invalid ipc 0: must be >= 1"),
        (["--ipc", "one"], "invalid ipc 'one'"),
        (["--ipc", "500"], "ipc 500 is larger than the smallest class of digits"),
        (["--set", "dm.lr_img"], "malformed --set 'dm.lr_img': expected NAME.PARAM=VALUE"),
        (["--set", "lr_img=1"], "malformed --set 'lr_img=1'"),
        (["--set", "dm.lr=1"], "unknown parameter dm.lr; valid parameters of dm: amp, batch_real, dsa"),
        (["--set", "dm.iterations=ten"], "invalid value 'ten' for dm.iterations: expected int"),
        (["--set", "dm.init=zeros"], "invalid value 'zeros' for dm.init; valid choices: real, noise"),
        (["--set", "xx.lr_img=1"], "--set xx.lr_img: no component is named 'xx'; valid names: alexnet, cifar10"),
        (["--methods", "random", "--set", "dm.lr=1"], "unknown parameter dm.lr; valid parameters of dm"),
        (["--set", "eval.nope=1"], "unknown parameter eval.nope; valid parameters of eval: batch"),
        (["--datasets", "mnist"], "dataset 'mnist'"),
        (["--datasets", "imagefolder"], "dataset 'imagefolder' needs an argument"),
        (["--datasets", "imagefolder:/no/such/dir"], "/no/such/dir"),
        (["--preset", "huge"], "'huge' is not one of 'small', 'paper'"),
        (["--device", "tpu"], "invalid device 'tpu'"),
        (["--executor", "spark"], "unknown executor 'spark'; valid choices: local, ray, slurm"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(ddb, tmp_path, args, message):
    store = tmp_path / "results" / "r.sqlite"
    res = ddb("run", "--store", str(store), "--data-root", str(tmp_path / "data"), *args)
    assert res.code == 2
    assert res.err.startswith("ddbench: error: ") and res.err.count("\n") == 1, res.err
    assert message in res.err
    assert not store.parent.exists()


@pytest.mark.parametrize("where", ["file", "dir", "readonly"])
def test_unwritable_store(ddb, tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    store = {"file": blocker / "r.sqlite", "dir": tmp_path, "readonly": Path("/proc/ddbench/r.sqlite")}[where]
    res = ddb("run", "--store", str(store), *TINY)
    assert res.code == 2 and res.err.count("\n") == 1
    assert "store" in res.err and "--store" in res.err or "directory" in res.err


def test_data_root_comes_from_the_option_then_the_environment_then_datasets(ddb, tmp_path, monkeypatch):
    monkeypatch.setenv("DDBENCH_DATA", str(tmp_path / "from-env"))
    res = ddb("run", "--datasets", "mnist", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 2 and str(tmp_path / "from-env" / "MNIST" / "raw") in res.err
    res = ddb("run", "--datasets", "mnist", "--data-root", str(tmp_path / "opt"), "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 2 and str(tmp_path / "opt" / "MNIST" / "raw") in res.err
    monkeypatch.delenv("DDBENCH_DATA")
    res = ddb("run", "--datasets", "mnist", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 2 and "datasets/MNIST/raw" in res.err


def test_dataset_settings_are_stored_apart_and_never_pooled(ddb, tmp_path):
    """A swept or set dataset parameter is part of the stored dataset name: a report shows
    each setting on its own row, and the default setting keeps the plain spec."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / split / c / f"{i}.png")
    spec, store = f"imagefolder:{tmp_path / 'imgs'}", tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "random", "--datasets", spec, "--ipc", "1", "--seeds", "0", "--store", str(store),
              "--data-root", str(tmp_path / "data"), "--set", "imagefolder.size=8,32", *TINY)
    assert res.code == 0, res.err
    assert sorted(r["dataset"] for r in rows(store)) == [spec, f"{spec}[size=8]"]
    res = ddb("report", "--store", str(store), "--datasets", spec, "--format", "json")
    assert res.code == 0 and res.out.count(f"{spec}[size=8]") >= 1  # the plain spec selects its settings too
    assert sorted({c["dataset"] for c in json.loads(res.out)["cells"]}) == [spec, f"{spec}[size=8]"]


def test_the_image_grid_lays_classes_side_by_side(tmp_path):
    """As the papers show a set: one column per class, its images down the column; IPC 1 is
    one row of ten classes, not a strip one image wide."""
    import torch
    from PIL import Image

    from ddbench.storage.artifacts import save_grid
    from ddbench.synthetic import SyntheticSet

    for ipc in (1, 3):
        labels = torch.arange(10 * ipc) % 10
        images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 8, 8) / 9  # class c: grey level c/9
        save_grid(tmp_path / f"g{ipc}.png", SyntheticSet(images=images.clone(), labels=labels), 10, lambda t: t)
        grid = Image.open(tmp_path / f"g{ipc}.png").convert("L")
        cell = 32 + 2  # 8x8 shown 4x larger, 2 px padding
        assert grid.size == (10 * cell + 2, ipc * cell + 2)
        for c in range(10):  # the centre of each column's first image has its class's grey level
            assert abs(grid.getpixel((2 + c * cell + 16, 2 + 16)) - round(255 * c / 9)) <= 1
