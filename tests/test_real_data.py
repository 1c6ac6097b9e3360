"""`ddbench run` on the real MNIST and CIFAR-10 copies (../shared/data), end to end."""

from __future__ import annotations

import statistics
import zipfile

import pytest
from conftest import TINY, need_shared, rows

pytestmark = pytest.mark.slow


def _mnist_root(tmp_path):
    """A data root whose MNIST/raw links to the shared copy."""
    raw = need_shared("MNIST", "raw")
    root = tmp_path / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    for f in raw.glob("*.gz"):
        (root / "MNIST" / "raw" / f.name).symlink_to(f)
    return root


def test_mnist_random_vs_dm(ddb, tmp_path):
    root = _mnist_root(tmp_path)
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "random,dm", "--datasets", "mnist", "--ipc", "1", "--seeds", "0",
              "--data-root", str(root), "--store", str(store), *TINY)
    assert res.code == 0, res.err
    got = rows(store)
    assert len(got) == 2 and all(r["status"] == "ok" and r["dataset"] == "mnist" for r in got)
    assert all(r["accuracy"] > 0.1 for r in got)  # above chance after 3 passes on 10 images
    # decoded tensors are cached: the second run reads the cache
    assert any((root / ".ddbench-cache").iterdir())


def test_cifar10_image_folder(ddb, tmp_path):
    zpath = need_shared("cifar10-jpeg.zip")
    folder = tmp_path / "cifar10"
    with zipfile.ZipFile(zpath) as z:
        names = [n for n in z.namelist() if n.endswith(".jpg")]
        keep = []
        for split, per_class in (("train", 12), ("test", 6)):
            by_class: dict[str, list[str]] = {}
            for n in names:
                parts = n.split("/")
                if parts[1] == split:
                    by_class.setdefault(parts[2], []).append(n)
            for files in by_class.values():
                keep += sorted(files)[:per_class]
        for n in keep:
            target = folder / "/".join(n.split("/")[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(n))
    store = tmp_path / "r.sqlite"
    spec = f"imagefolder:{folder}"
    res = ddb("run", "--methods", "random,dm", "--datasets", spec, "--ipc", "1,2", "--seeds", "0",
              "--data-root", str(tmp_path / "data"), "--store", str(store), *TINY)
    assert res.code == 0, res.err
    got = rows(store)
    assert len(got) == 4 and all(r["status"] == "ok" and r["dataset"] == spec for r in got)
    res = ddb("run", "--datasets", spec, "--ipc", "13", "--store", str(store), *TINY)
    assert res.code == 2 and "ipc 13 is larger than the smallest class" in res.err
    # stats=train is the default: the same cells (keys unchanged by the parameter's addition);
    # stats=cifar10 (the reference constants) is another dataset setting: new cells
    common = ("--methods", "random", "--datasets", spec, "--ipc", "1", "--seeds", "0",
              "--data-root", str(tmp_path / "data"), "--store", str(store), *TINY)
    res = ddb("run", *common, "--set", "imagefolder.stats=train")
    assert res.code == 0 and len(rows(store)) == 4, res.err
    res = ddb("run", *common, "--set", "imagefolder.stats=cifar10")
    assert res.code == 0, res.err
    new = rows(store, f"dataset = '{spec}[stats=cifar10]'")  # stored apart: never pooled with stats=train
    assert len(rows(store)) == 5 and len(new) == 1
    res = ddb("report", "--store", str(store), "--methods", "random")
    assert res.code == 0 and f"{spec}[stats=cifar10]" in res.out, res.out


def test_dc_dsa_and_mtt_beat_random_at_ipc_1_on_mnist(ddb, tmp_path):
    """The small preset on the real MNIST, 3 seeds (one evaluation network each)."""
    root = _mnist_root(tmp_path)
    store = tmp_path / "r.sqlite"
    methods = ("random", "dc", "dsa", "mtt")
    res = ddb("run", "--methods", ",".join(methods), "--datasets", "mnist", "--ipc", "1",
              "--seeds", "0,1,2", "--set", "eval.epochs=60", "--set", "eval.num_eval=1",
              "--data-root", str(root), "--store", str(store), "--quiet")
    assert res.code == 0, res.err
    acc = {m: statistics.fmean(r["accuracy"] for r in rows(store, f"method='{m}'")) for m in methods}
    assert all(acc[m] > acc["random"] + 0.05 for m in methods[1:]), acc
