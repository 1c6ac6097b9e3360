"""A catalogue of bad inputs through the CLI: each exits 2 with one line naming the bad value,
and leaves a store that already holds results exactly as it was (no row, run or file added)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import TINY

from ddbench.cli import main

#: a valid base command; each case appends what makes it bad (a later option wins in click)
BASE = ["run", "--methods", "random,dm", "--ipc", "1", "--seeds", "0", "--set", "eval.epochs=2", "--quiet"]

CASES = [
    # the six of the issue
    (["--set", "dm.iterations=-5"], ["dm.iterations", "-5", ">= 1"]),
    (["--methods", "mtt", "--set", "mtt.syn_steps=0"], ["mtt.syn_steps", "0", ">= 1"]),
    (["--set", "dm.lr_img=nan"], ["dm.lr_img", "nan"]),
    (["--set", "dm.dsa_strategy=nosuch"], ["dm.dsa_strategy", "nosuch", "crop"]),
    (["--methods", "dm,,mtt"], ["--methods", "'dm,,mtt'", "empty item"]),
    (["--methods", "dm,"], ["--methods", "empty item"]),
    # methods
    (["--methods", "nosuch"], ["nosuch", "dm"]),
    (["--methods", "dm+nosuch"], ["nosuch", "mim"]),
    (["--methods", "dm+mim+mim"], ["dm+mim+mim", "twice"]),
    (["--methods", "dm+"], ["'dm+'", "base[+objective...]"]),
    (["--methods", ""], ["--methods", "empty"]),
    # datasets, conditions
    (["--datasets", "nosuch"], ["nosuch", "digits"]),
    (["--datasets", "imagefolder"], ["imagefolder", "needs an argument"]),
    (["--datasets", "digits:x"], ["digits", "takes no argument"]),
    (["--datasets", "digits,"], ["--datasets", "empty item"]),
    (["--conditions", "nosuch"], ["nosuch", "clean"]),
    (["--conditions", "noise:2"], ["noise", "2"]),
    (["--conditions", "clean,,zca"], ["--conditions", "empty item"]),
    # IPC and seeds
    (["--ipc", "0"], ["ipc", "0", ">= 1"]),
    (["--ipc", "1,,10"], ["--ipc", "empty item"]),
    (["--ipc", "ten"], ["ipc", "'ten'", "integers"]),
    (["--ipc", "1000"], ["ipc 1000", "smallest class"]),
    (["--seeds", "-1"], ["seed", "-1", ">= 0"]),
    # models
    (["--models", "nosuch"], ["nosuch", "convnet"]),
    (["--models", "timm"], ["timm", "needs an argument"]),
    (["--models", "convnet:x"], ["convnet", "takes no argument"]),
    # --set: names, syntax, types, declared ranges and choices
    (["--set", "nosuch.x=1"], ["nosuch", "valid names"]),
    (["--set", "dm.nosuch=1"], ["dm.nosuch", "lr_img"]),
    (["--set", "dm.iterations=abc"], ["'abc'", "dm.iterations", "int"]),
    (["--set", "dm.iterations=2.5"], ["'2.5'", "dm.iterations", "int"]),
    (["--set", "dm.iterations"], ["dm.iterations", "NAME.PARAM=VALUE"]),
    (["--set", "dm.lr_img=1,"], ["dm.lr_img=1,", "NAME.PARAM=VALUE"]),
    (["--set", "dm.iterations=2", "--set", "dm.iterations=3"], ["dm.iterations", "twice"]),
    (["--set", "dm.init=nosuch"], ["'nosuch'", "dm.init", "real"]),
    (["--set", "dm.momentum=2"], ["dm.momentum", "2"]),
    (["--set", "dm.lr_img=inf"], ["dm.lr_img", "inf"]),
    (["--set", "dm.lr_img=1,-1"], ["dm.lr_img", "-1"]),
    (["--set", "eval.num_eval=0"], ["eval.num_eval", "0", ">= 1"]),
    (["--set", "eval.lr=-0.01"], ["eval.lr", "-0.01"]),
    (["--set", "eval.batched=maybe"], ["'maybe'", "eval.batched", "auto"]),
    (["--methods", "dm+mim", "--set", "mim.lambda=-1"], ["mim.lambda", "-1"]),
    # execution
    (["--preset", "huge"], ["'huge'", "small", "paper"]),
    (["--device", "tpu"], ["'tpu'", "cpu"]),
    (["--executor", "nosuch"], ["nosuch", "local"]),
    (["--jobs", "0"], ["--jobs", "0"]),
    (["--set", "local.jobs=0"], ["local.jobs", "0"]),
]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A store that already holds a finished run (random, digits, IPC 1)."""
    folder = tmp_path_factory.mktemp("stored")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDBENCH_PLUGINS", "")
        mp.setenv("DDBENCH_COMPILE", "off")
        mp.chdir(folder)
        main(["run", "--methods", "random", "--ipc", "1", "--seeds", "0", "--store", "results/r.sqlite",
              "--data-root", "data", *TINY])  # returns normally when every cell is stored ok
    assert (folder / "results" / "r.sqlite").is_file()
    return folder / "results"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the store, its WAL, artifacts) -> its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_catalogue_is_long_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize(("args", "fragments"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_the_store_is_untouched(ddb, stored, tmp_path, args, fragments):
    results = tmp_path / "results"
    shutil.copytree(stored, results)
    before = snapshot(results)
    res = ddb(*BASE, "--store", str(results / "r.sqlite"), "--data-root", str(stored.parent / "data"), *args)
    assert res.code == 2, (res.code, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddbench: error: "), res.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert snapshot(results) == before


def test_bad_compile_setting_in_the_environment(ddb, stored, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(stored, results)
    before = snapshot(results)
    monkeypatch.setenv("DDBENCH_COMPILE", "sometimes")
    res = ddb(*BASE, "--store", str(results / "r.sqlite"), "--data-root", str(stored.parent / "data"))
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "sometimes" in res.err, res.err
    assert snapshot(results) == before


def test_store_that_is_a_directory(ddb, tmp_path):
    res = ddb(*BASE, "--store", str(tmp_path))
    assert res.code == 2 and "is a directory" in res.err and len(res.err.strip().splitlines()) == 1
