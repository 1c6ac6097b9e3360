"""``--methods file:PATH`` end to end: released sets in every format evaluated beside random
and dm in one run, keyed by content, and bad files refused before anything is written."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import TINY, rows
from PIL import Image
from safetensors.torch import save_file

from ddbench.builtins.datasets.digits import Digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return Digits().load(None, tmp_path_factory.mktemp("data"), False)


def _real(data, ipc: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` real training images per class, in pixel space [0, 1]."""
    idx = torch.cat([data.class_indices(c)[:ipc] for c in range(data.num_classes)])
    return data.denormalize(data.x_train[idx]), data.y_train[idx]


def write_sets(folder, data) -> dict[str, str]:
    """One set per format: name -> path."""
    x, y = _real(data)
    norm = (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
    probs = torch.full((10, 10), 0.02)
    probs[torch.arange(10), y] = 0.82
    out = {}
    save_file({"images": x, "labels": y, "lr": torch.tensor(0.02)}, str(folder / "pixel.safetensors"))
    out["pixel_lr"] = folder / "pixel.safetensors"
    torch.save({"images": norm, "labels": probs}, folder / "soft.pt")
    out["normalised_soft"] = folder / "soft.pt"
    np.savez(folder / "u8.npz", images=(x * 255).round().to(torch.uint8).numpy(), labels=y.numpy())
    out["npz"] = folder / "u8.npz"
    datm = folder / "datm"
    datm.mkdir()
    torch.save(norm, datm / "images_best.pt")
    torch.save(torch.randn(10, 10) + 5 * torch.nn.functional.one_hot(y, 10), datm / "labels_best.pt")
    torch.save(torch.tensor(0.01), datm / "lr_best.pt")
    out["datm_logits"] = datm
    pngs = folder / "pngs"
    for img, label in zip(x, y, strict=True):
        (pngs / data.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().byte().numpy(), mode="L").save(pngs / data.classes[label] / "0.png")
    out["folder"] = pngs
    return {k: str(v) for k, v in out.items()}


def test_released_sets_in_every_format_beside_random_and_dm(ddb, tmp_path, digits):
    sets = write_sets(tmp_path, digits)
    store = tmp_path / "r.sqlite"
    methods = ",".join(["random", "dm", *(f"file:{p}" for p in sets.values())])
    res = ddb("run", "--methods", methods, "--datasets", "digits", "--ipc", "1", "--seeds", "0", *TINY,
              "--store", str(store))
    assert res.code == 0, res.err
    got = rows(store)
    by_method = {r["method"]: r for r in got}
    assert set(by_method) == {"random", "dm", *(f"file:{p}" for p in sets.values())}
    assert all(r["status"] == "ok" and r["ipc"] == 1 for r in got)
    # the planning notes say what was read: hash, soft labels, lr, the space rule applied
    assert "images pixel (auto: values fill [0, 1])" in res.err
    assert "soft labels (probs)" in res.err and "soft labels (logits)" in res.err and "lr 0.02" in res.err
    for path in sets.values():
        params = json.loads(by_method[f"file:{path}"]["params"])["file"]
        assert params["path"] == path and len(params["sha256"]) == 64
    # the real images, whatever the format, are the same set: pixel and normalised files fit alike
    from ddbench.storage.artifacts import load_synset

    synsets = {}
    for r in got:
        if r["method"].startswith("file:"):
            (art,) = (tmp_path / "artifacts").glob(r["distill_key"] + "*.safetensors")
            synsets[r["method"]] = load_synset(art)
    ref = synsets[f"file:{sets['pixel_lr']}"]
    assert ref.lr == pytest.approx(0.02)
    for name in ("normalised_soft", "datm_logits", "folder", "npz"):
        assert torch.allclose(synsets[f"file:{sets[name]}"].images, ref.images, atol=1e-2), name
    assert synsets[f"file:{sets['datm_logits']}"].soft_kind == "logits"

    # a rerun is cached; a moved file is the same result; a changed file is a new one
    again = ddb("run", "--methods", f"file:{sets['pixel_lr']}", "--datasets", "digits", "--ipc", "1",
                "--seeds", "0", *TINY, "--store", str(store))
    assert again.code == 0 and "0 evaluation(s) run, 1 already stored" in again.out
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes((tmp_path / "pixel.safetensors").read_bytes())
    same = ddb("run", "--methods", f"file:{moved}", "--datasets", "digits", "--ipc", "1", "--seeds", "0",
               *TINY, "--store", str(store), "--dry-run")
    assert same.code == 0 and "0 to run" in same.out
    x, y = _real(digits)
    save_file({"images": x.flip(0), "labels": y.flip(0)}, str(moved))
    changed = ddb("run", "--methods", f"file:{moved}", "--datasets", "digits", "--ipc", "1", "--seeds", "0",
                  *TINY, "--store", str(store), "--dry-run")
    assert changed.code == 0 and "1 to run" in changed.out


def test_a_soft_label_file_trains_on_its_own_labels(ddb, tmp_path, digits):
    sets = write_sets(tmp_path, digits)
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", f"file:{sets['datm_logits']}", "--datasets", "digits", "--ipc", "1",
              "--seeds", "0", *TINY, "--set", "eval.labels=hard,soft", "--store", str(store))
    assert res.code == 0, res.err
    assert "teacher" not in res.err  # the file's own soft labels: no teacher needed
    assert sorted(r["protocol"] for r in rows(store)) == ["ddbench-eval/v1", "ddbench-eval/v1+soft"]


class _Runs:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("case", ["shape", "nan", "label_range", "pickle", "empty_folder", "channels",
                                  "missing", "objectives"])
def test_bad_files_are_one_line_errors_and_nothing_is_written(ddb, tmp_path, digits, case):
    x, y = _real(digits)
    path = tmp_path / "bad.safetensors"
    method = None
    if case == "shape":
        save_file({"images": x[:, :, :4, :4].contiguous(), "labels": y}, str(path))
    elif case == "nan":
        x[0, 0, 0, 0] = float("nan")
        save_file({"images": x, "labels": y}, str(path))
    elif case == "label_range":
        save_file({"images": x, "labels": y + 5}, str(path))
    elif case == "channels":
        save_file({"images": x.expand(-1, 3, -1, -1).contiguous(), "labels": y}, str(path))
    elif case == "pickle":
        path = tmp_path / "bad.pt"
        path.write_bytes(pickle.dumps({"images": _Runs(str(tmp_path / "ran")), "labels": y}))
    elif case == "empty_folder":
        path = tmp_path / "empty"
        (path / "0").mkdir(parents=True)
    elif case == "missing":
        path = tmp_path / "nowhere.pt"
    else:
        save_file({"images": x, "labels": y}, str(path))
        method = f"file:{path}+mim"
    store = tmp_path / "results" / "r.sqlite"
    res = ddb("run", "--methods", method or f"file:{path}", "--datasets", "digits", "--ipc", "1", "--seeds", "0",
              *TINY, "--store", str(store))
    assert res.code == 2, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddbench: error:") and str(path) in lines[0], res.err
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "ran").exists()  # the pickle's code never ran
