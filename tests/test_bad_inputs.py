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
    # integers beyond what the store and torch hold (64 bits)
    (["--seeds", "9223372036854775808"], ["seed", "9223372036854775808", "64-bit"]),
    (["--ipc", "99999999999999999999999"], ["ipc", "99999999999999999999999", "64-bit"]),
    (["--set", "dm.iterations=99999999999999999999999"], ["dm.iterations", "99999999999999999999999", "64-bit"]),
    (["--set", "dm.batch_real=1e300"], ["dm.batch_real", "64-bit"]),
    (["--store", ""], ["--store is empty"]),
    (["--store", "  "], ["--store is empty"]),
    # trackers
    (["--track", ",,"], ["--track", "empty"]),
    (["--track", "mlflow,"], ["--track", "empty item"]),
    (["--track", "nosuch"], ["nosuch", "mlflow", "wandb"]),
    (["--track", "mlflow", "--track-uri", "garbage"], ["'garbage'", "http", "file"]),
    (["--track", "mlflow", "--track-uri", "http://"], ["'http://'", "tracking URI"]),
]

#: sweep files that are not what a sweep file is: (suffix, bytes, fragments of the error)
CONFIGS = [
    (".yaml", b"methods: [random]\nseeds: [99999999999999999999999]\n", ["seeds", "64-bit"]),
    (".yaml", b"methods: [random]\nset: {dm.iterations: 99999999999999999999999}\n", ["dm.iterations", "64-bit"]),
    (".yaml", b"methods: " + b"[" * 3000 + b"]" * 3000 + b"\n", ["nested deeper"]),
    (".yaml", b"params: {dm: {a: {b: {c: {d: {e: {f: {g: 1}}}}}}}}\n", ["nested deeper"]),
    (".toml", b"x = " + b"[" * 3000 + b"]" * 3000 + b"\n", ["nested deeper"]),
    (".yaml", b"methods: [random]\nstore: \xff\xfe\n", ["not UTF-8", "0xff"]),
    (".yaml", b"methods: [random]\n1: 2\n", ["key 1", "not text"]),
    (".yaml", b"ipc: [1, null]\n", ["ipc[1]", "null"]),
    (".yaml", b"set: {dm.iterations: null}\n", ["dm.iterations"]),
    (".yaml", b"store: [a, b]\nmethods: [random]\n", ["store", "one value"]),
    (".yaml", b"methods: [random]\ntrack: [mlflow, '']\n", ["--track", "empty item"]),
    (".yaml", b"# big\n" + b"#" * (1 << 20) + b"\n", ["larger than 1 MiB"]),
]


@pytest.mark.parametrize(("suffix", "content", "fragments"), CONFIGS,
                         ids=[f"{i}:{c[:30]!r}" for i, (_, c, _) in enumerate(CONFIGS)])
def test_bad_sweep_file_is_one_line_exit_2_and_the_store_is_untouched(ddb, stored, tmp_path, suffix, content,
                                                                       fragments):
    results = tmp_path / "results"
    shutil.copytree(stored, results)
    before = snapshot(results)
    config = tmp_path / f"sweep{suffix}"
    config.write_bytes(content)
    res = ddb("run", "--config", str(config), "--store", str(results / "r.sqlite"),
              "--data-root", str(stored.parent / "data"), "--quiet")
    refused(res, fragments)
    assert snapshot(results) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["results", config.name])


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


def refused(res, fragments) -> None:
    """Exit 2 with one ``ddbench: error:`` line holding every fragment."""
    assert res.code == 2, (res.code, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddbench: error: "), res.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


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
    refused(res, fragments)
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
