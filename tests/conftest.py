"""Shared fixtures: an in-process CLI runner, tiny run settings, fake plugin packages."""

from __future__ import annotations

import os
import sqlite3
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DDBENCH_SHARED_DATA") or REPO.parent / "shared" / "data")

#: the cheapest settings that still exercise every stage
TINY = ["--set", "dm.iterations=3", "--set", "eval.epochs=2", "--set", "eval.num_eval=1", "--quiet"]


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    """No installed third-party plugins; data root and cwd inside tmp."""
    monkeypatch.setenv("DDBENCH_PLUGINS", os.environ.get("DDBENCH_TEST_PLUGINS", ""))
    monkeypatch.delenv("DDBENCH_DATA", raising=False)
    # eager unless a test asks (tests/test_compiling.py): compiling changes float rounding only,
    # and its one-off cost would dominate these tiny runs
    monkeypatch.setenv("DDBENCH_COMPILE", "off")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def ddb(capsys):
    """Run the CLI in-process: ``ddb("run", "--methods", "dm")`` -> Result(code, out, err)."""
    from ddbench.cli import main

    def call(*args: str) -> Result:
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


def rows(store: Path, where: str = "1=1") -> list[dict]:
    db = sqlite3.connect(store)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM results WHERE {where}")]
    finally:
        db.close()


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch):
    """Install a one-module plugin package as a dist-info on sys.path, loadable by name."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    names = []

    def make(name: str, source: str, version: str = "1.0") -> str:
        module = f"fake_{name}"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"fake_{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-{name}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[ddbench]\n{name} = {module}\n")
        names.append(name)
        monkeypatch.setenv("DDBENCH_PLUGINS", ",".join(names))
        sys.modules.pop(module, None)
        return module

    yield make
    for name in names:
        sys.modules.pop(f"fake_{name}", None)


def need_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set DDBENCH_SHARED_DATA)")
    return path
