"""The example plugin package ``plugins/ddbench-coreset``: its selection rules and distillers
from the source tree, then the package pip-installed and used through ``python -m ddbench``."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ddbench import DataBundle, DistillContext

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "plugins" / "ddbench-coreset"
ORIGIN = "from ddbench_coreset.plugin (ddbench-coreset 0.1.0)"
PARAMS = "params: model=convnet, feature_epochs=10 (small: 1) [>= 0]"


@pytest.fixture
def coreset(monkeypatch):
    """The package imported from the source tree (not installed)."""
    monkeypatch.syspath_prepend(str(PKG))
    return importlib.import_module("ddbench_coreset.plugin")


# --------------------------------------------------------------------------- selection rules


def _herding_by_hand(points: list[list[float]], k: int) -> list[int]:
    """The herding criterion written out in plain Python, as a cross-check."""
    n, d = len(points), len(points[0])
    mu = [sum(p[j] for p in points) / n for j in range(d)]
    total, chosen = [0.0] * d, []
    for t in range(1, k + 1):
        best, best_gap = None, math.inf
        for i in range(n):
            if i in chosen:
                continue
            gap = sum((mu[j] - (total[j] + points[i][j]) / t) ** 2 for j in range(d))
            if gap < best_gap:
                best, best_gap = i, gap
        chosen.append(best)
        total = [total[j] + points[best][j] for j in range(d)]
    return chosen


def test_herding_tracks_the_mean_not_the_nearest_points(coreset):
    from ddbench_coreset.selection import herding

    # mean 0.92: the three points near it come first, then the outlier 5.0 (which pulls the
    # running mean back up), not -1.0, although -1.0 is the nearer of the two to the mean
    line = torch.tensor([[-1.0], [0.1], [0.2], [0.3], [5.0]])
    assert herding(line, 4).tolist() == [3, 2, 1, 4]
    nearest = ((line - line.mean(0)) ** 2).sum(1).argsort().tolist()
    assert nearest[:4] == [3, 2, 1, 0]
    assert herding(line, 5).tolist() == [3, 2, 1, 4, 0]
    assert herding(line, 9).tolist() == [3, 2, 1, 4, 0]  # k > n: each point once
    assert herding(line, 0).tolist() == []

    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(40, 6, generator=g)
    got = herding(cloud, 12)
    assert got.dtype == torch.int64
    assert got.tolist() == _herding_by_hand(cloud.double().tolist(), 12)
    # the greedy running mean ends close to the class mean; a random subset does not
    herd_err = (cloud[got].mean(0) - cloud.mean(0)).norm()
    rand_err = (cloud[:12].mean(0) - cloud.mean(0)).norm()
    assert herd_err < 0.5 * rand_err


def test_k_center_starts_at_the_mean_and_takes_the_farthest_points(coreset):
    from ddbench_coreset.selection import k_center

    pts = torch.tensor([[0.0, 0.0], [0.2, 0.1], [10.0, 0.0], [-9.0, 0.0], [0.0, 6.0], [1.0, 1.0]])
    # mean (0.37, 1.18): nearest is (1, 1); then (-9, 0) is farthest from it, then (10, 0),
    # then (0, 6) (26 from (1, 1)), then (0, 0) (2 from (1, 1)), last (0.2, 0.1)
    assert k_center(pts, 6).tolist() == [5, 3, 2, 4, 0, 1]
    assert k_center(pts, 3).tolist() == [5, 3, 2]
    assert k_center(pts, 1).tolist() == [5]
    assert k_center(pts, 0).tolist() == []


def test_rules_never_repeat_a_point_even_among_duplicates(coreset):
    from ddbench_coreset.selection import herding, k_center

    same = torch.ones(5, 3)
    for rule in (herding, k_center):
        for k in (1, 3, 5, 8):
            got = rule(same, k).tolist()
            assert len(got) == min(k, 5) and len(set(got)) == len(got)
    twins = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 4.0]])
    assert sorted(k_center(twins, 4).tolist()) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- the distillers


class TinyNet(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.embed(x))


def _toy_bundle(counts=(12, 12, 3)) -> DataBundle:
    g = torch.Generator().manual_seed(1)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=g)]
    x = torch.randn(len(y), 1, 4, 4, generator=g) + y.view(-1, 1, 1, 1).float()
    return DataBundle("toy", x, y, x[:6], y[:6], [f"c{i}" for i in range(len(counts))], (0.0,), (1.0,))


def _distill(plugin, cls_name: str, data: DataBundle, ipc: int, seed: int = 0, **params):
    cls = getattr(plugin, cls_name)
    built, progress = [], []

    def build_model(name):
        built.append(name)
        return TinyNet(data.num_classes)

    ctx = DistillContext(data=data, ipc=ipc, seed=seed, device=torch.device("cpu"),
                         objectives=[], build_model=build_model,
                         progress=lambda s, t: progress.append((s, t)))
    torch.manual_seed(seed)  # what the runner does before each distillation
    synset = cls(cls.Params(**params)).distill(ctx)
    return synset, built, progress


@pytest.mark.parametrize("cls_name", ["Herding", "KCenter"])
def test_distiller_returns_ipc_real_images_per_class(coreset, cls_name):
    data = _toy_bundle()
    synset, built, progress = _distill(coreset, cls_name, data, ipc=4, feature_epochs=2)
    synset.validate(data, cls_name.lower())
    assert built == ["convnet"]
    assert synset.labels.dtype == torch.int64
    # exactly ipc per class; the 3-image class gives all it has
    assert torch.bincount(synset.labels).tolist() == [4, 4, 3]
    idx = torch.tensor(synset.meta["train_indices"])
    assert len(set(idx.tolist())) == len(idx) == 11
    assert torch.equal(synset.images, data.x_train[idx])  # real images, normalised space
    assert torch.equal(synset.labels, data.y_train[idx])
    # one step per SGD batch (1 a pass here) and one per class, ending at the total
    assert progress[-1] == (2 + 3, 2 + 3)
    assert [s for s, _ in progress] == list(range(1, 6))

    again, _, _ = _distill(coreset, cls_name, data, ipc=4, feature_epochs=2)
    assert again.meta == synset.meta and torch.equal(again.images, synset.images)


def test_selection_follows_the_trained_features(coreset):
    """The distiller applies its rule to the embeddings of the trained network."""
    from ddbench_coreset.features import train_features
    from ddbench_coreset.selection import k_center

    data = _toy_bundle()
    synset, _, _ = _distill(coreset, "KCenter", data, ipc=3, feature_epochs=3)
    ctx = DistillContext(data=data, ipc=3, seed=0, device=torch.device("cpu"), objectives=[],
                         build_model=lambda name: TinyNet(data.num_classes))
    torch.manual_seed(0)
    feats = train_features(ctx, "convnet", 3)
    assert feats.shape == (len(data.x_train), 8)
    expect = [data.class_indices(c)[k_center(feats[data.class_indices(c)], 3)] for c in range(3)]
    assert synset.meta["train_indices"] == torch.cat(expect).tolist()


# --------------------------------------------------------------------------- installed, end to end

ARTEFACTS = ("build", "ddbench_coreset.egg-info", "dist")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The package pip-installed (from a copy, so no build/ lands in the repo) into a folder."""
    tmp = tmp_path_factory.mktemp("coreset")
    before = {a for a in ARTEFACTS if (PKG / a).exists()}
    src = tmp / "src"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns(*ARTEFACTS, "__pycache__"))
    target = tmp / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, cwd=tmp,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "ddbench_coreset" / "plugin.py").exists()
    assert {a for a in ARTEFACTS if (PKG / a).exists()} == before
    return target


def _ddbench(site: Path, cwd: Path, *args: str, plugins: str = "coreset"):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env["DDBENCH_PLUGINS"] = plugins
    env.pop("DDBENCH_DATA", None)
    # one thread: next to pytest on a 2-core box, torch's default threads oversubscribe it
    # (same numbers, about 2.5x faster here)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "ddbench", *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


def _listing(out: str) -> dict[str, list[str]]:
    """``ddbench list`` output -> {component name: [summary, origin line, params line]}."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^  (\S+)\s+(.*)$", line)
        if m:
            current = m.group(1)
            entries[current] = [m.group(2)]
        elif line.startswith("   ") and current:
            entries[current].append(line.strip())
        else:
            current = None
    return entries


def test_installed_plugin_is_listed_only_when_allowed(site, tmp_path):
    res = _ddbench(site, tmp_path, "list", "distillers")
    assert res.returncode == 0, res.stderr
    assert "failed to load" not in res.stderr
    entries = _listing(res.stdout)
    assert entries["herding"][0].startswith("Herding coreset:")
    assert entries["kcenter"][0].startswith("K-center coreset:")
    for name in ("herding", "kcenter"):
        assert entries[name][1:] == [ORIGIN, PARAMS]
    assert entries["random"][1].startswith("from ddbench.builtins.distillers.random (ddbench ")

    res = _ddbench(site, tmp_path, "list", "distillers", plugins="")
    assert res.returncode == 0, res.stderr
    entries = _listing(res.stdout)
    assert "herding" not in entries and "kcenter" not in entries and "random" in entries
    assert "ddbench_coreset" not in res.stdout + res.stderr


def test_installed_plugin_runs_in_a_sweep(site, tmp_path):
    store = tmp_path / "r.sqlite"
    res = _ddbench(site, tmp_path, "run", "--methods", "herding,kcenter,random", "--datasets", "digits",
                   "--ipc", "1,5", "--seeds", "0", "--set", "eval.epochs=20", "--set", "eval.num_eval=1",
                   "--quiet", "--store", str(store))
    assert res.returncode == 0, res.stderr
    assert "0 failed" in res.stdout and "failed:" not in res.stderr

    # the printed table: one column per method, a number in every cell
    lines = res.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("dataset"))
    columns = re.split(r"\s{2,}", lines[header].strip())
    assert {"herding", "kcenter", "random"} <= set(columns)
    table: dict[tuple[str, str], float] = {}
    for line in lines[header + 2 : header + 4]:
        cells = dict(zip(columns, re.split(r"\s{2,}", line.strip()), strict=True))
        assert cells["dataset"] == "digits"
        for method in ("herding", "kcenter", "random"):
            # one run: no std; '*' marks the row's best
            m = re.match(r"^(\d+\.\d) ± -( \*)? \(n=1\)$", cells[method])
            assert m, cells[method]
            table[method, cells["ipc"]] = float(m.group(1))
    assert set(table) == {(m, i) for m in ("herding", "kcenter", "random") for i in ("1", "5")}
    # at ipc 1 both rules pick the image nearest the class mean, on the same features
    assert table["herding", "1"] == table["kcenter", "1"]

    # the store: one ok row per method and IPC, the same numbers as the table
    db = sqlite3.connect(store)
    try:
        got = db.execute("SELECT method, ipc, status, accuracy, params FROM results").fetchall()
        synsets = db.execute("SELECT method, ipc, artifact FROM synsets").fetchall()
    finally:
        db.close()
    assert len(got) == 6
    for method, ipc, status, acc, params in got:
        assert status == "ok", (method, ipc)
        assert round(100 * acc, 1) == table[method, str(ipc)]
        if method != "random":
            assert json.loads(params)[method] == {"model": "convnet", "feature_epochs": 1}
            assert acc > 0.25, (method, ipc, acc)  # well above chance (0.1) on 10 classes
    assert {(m, i) for m, i, _ in synsets} == {(m, i) for m in ("herding", "kcenter", "random") for i in (1, 5)}

    # the stored synthetic sets are distinct real training images, ipc per class
    from safetensors import safe_open

    chosen = {}
    for method, ipc, artifact in synsets:
        if method == "random":
            continue
        with safe_open(str(store.parent / artifact), "pt") as f:
            labels = f.get_tensor("labels")
            chosen[method, ipc] = json.loads(f.metadata()["meta"])["train_indices"]
        assert torch.bincount(labels, minlength=10).tolist() == [ipc] * 10
        assert len(set(chosen[method, ipc])) == 10 * ipc
    assert chosen["herding", 1] == chosen["kcenter", 1]
    assert chosen["herding", 5] != chosen["kcenter", 5]
