"""Released sets read safely and unambiguously: pickles that would run code are refused and
never run, the reference DC/DSA/DM ``res_*.pt`` is read, the images' space is decided only on
unambiguous evidence, ZCA sets need the zca condition, and a learned lr never silently meets
an explicit ``eval.lr``."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch
from conftest import TINY, rows
from safetensors.torch import save_file

from ddbench.builtins.datasets.digits import Digits
from ddbench.data import conditions
from ddbench.data.released import fit_to_dataset, read_external
from ddbench.errors import DDBenchError

WHO = "file:x"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return Digits().load(None, tmp_path_factory.mktemp("data"), False)


@pytest.fixture(scope="module")
def white(digits, tmp_path_factory):
    return conditions.apply(digits, "zca", tmp_path_factory.mktemp("zca"))


def real(data):
    """One real training image per class: (pixels in [0, 1], normalised, labels)."""
    idx = torch.cat([data.class_indices(c)[:1] for c in range(data.num_classes)])
    pix = data.denormalize(data.x_train[idx])
    return pix, normalise(data, pix), data.y_train[idx]


def normalise(data, x):
    return (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)


def refused(path, data, match, space="auto"):
    """The one-line error of fitting ``path``; it names the file and ``match``."""
    with pytest.raises(DDBenchError) as err:
        fit_to_dataset(read_external(path), data, space, WHO)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and match in msg, msg
    return msg


def run(ddb, tmp_path, path, *extra):
    store = tmp_path / "results" / "r.sqlite"
    res = ddb("run", "--methods", f"file:{path}", "--datasets", "digits", "--ipc", "1", "--seeds", "0",
              *TINY, "--store", str(store), *extra)
    return res, store


def one_line_exit_2(res, tmp_path, *needles):
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and lines[0].startswith("ddbench: error: "), res.err
    assert all(n in lines[0] for n in needles), lines[0]
    assert not (tmp_path / "results").exists()  # nothing written
    return lines[0]


# --------------------------------------------------------------------------- pickles


class System:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("beside", ["tensors", "numpy values", "reference layout", "object array"])
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, digits, beside):
    marker = tmp_path / "marker"
    pix, norm, y = real(digits)
    evil = System(marker)
    obj = {"tensors": {"images": pix, "labels": y, "extra": evil},
           "numpy values": {"images": pix.numpy(), "labels": y, "lr": np.float32(0.01), "extra": evil},
           "reference layout": {"data": [[norm, y]], "accs_all_exps": {"ConvNet": [np.float64(0.5), evil]}},
           "object array": {"images": pix, "labels": y, "extra": np.array([evil, 1], dtype=object)}}[beside]
    torch.save(obj, tmp_path / "evil.pt")
    before = set(torch.serialization.get_safe_globals())
    msg = refused(tmp_path / "evil.pt", digits, "refused: the file needs unpickling of arbitrary objects")
    assert "system" in msg or "ObjectDType" in msg, msg  # names what the file asked for
    assert "weights_only" not in msg and "add_safe_globals" not in msg  # ddbench's words, not torch's hint
    assert not marker.exists()
    assert set(torch.serialization.get_safe_globals()) == before  # the numpy admission ended with the read


def test_a_refused_pickle_is_one_line_through_the_cli(ddb, tmp_path, digits):
    pix, _, y = real(digits)
    torch.save({"images": pix, "labels": y, "extra": System(tmp_path / "marker")}, tmp_path / "evil.pt")
    res, _ = run(ddb, tmp_path, tmp_path / "evil.pt")
    line = one_line_exit_2(res, tmp_path, "refused", "system")
    assert "weights_only" not in line and not (tmp_path / "marker").exists()


# --------------------------------------------------------------------------- the reference res_*.pt


def reference_file(path, norm, y, numpy1=False):
    """The reference code's ``torch.save({'data': ..., 'accs_all_exps': ...})``, two experiments;
    ``numpy1``: numpy globals under numpy 1's names, as the reference code's files have them."""
    torch.save({"data": [[norm, y], [norm.flip(0), y.flip(0)]],
                "accs_all_exps": {"ConvNet": [np.float64(0.81), np.mean([0.8, 0.82])]}}, path)
    if numpy1:
        with zipfile.ZipFile(path) as z:
            parts = [(i, z.read(i)) for i in z.infolist()]
        with zipfile.ZipFile(path, "w") as z:
            for info, data in parts:
                if info.filename.endswith("data.pkl"):
                    assert b"numpy._core.multiarray" in data
                    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                z.writestr(info, data)
    return path


@pytest.mark.parametrize("numpy1", [False, True], ids=["numpy2-names", "numpy1-names"])
def test_reference_result_file_gives_its_first_experiment(tmp_path, digits, numpy1):
    _, norm, y = real(digits)
    path = reference_file(tmp_path / "res_DM_digits_ConvNet_1ipc.pt", norm, y, numpy1)
    syn, space = fit_to_dataset(read_external(path), digits, "auto", WHO)
    assert space == "normalized (the reference DC/DSA/DM result layout, experiment 1 of 2)"
    assert torch.equal(syn.images, norm) and torch.equal(syn.labels, y)  # normalised: used as is


def test_reference_result_file_is_evaluated_through_the_cli(ddb, tmp_path, digits):
    _, norm, y = real(digits)
    path = reference_file(tmp_path / "res_DM_digits_ConvNet_1ipc.pt", norm, y)
    res, store = run(ddb, tmp_path, path)
    assert res.code == 0, res.err
    assert "images normalized (the reference DC/DSA/DM result layout, experiment 1 of 2)" in res.err
    assert [r["status"] for r in rows(store)] == ["ok"]


@pytest.mark.parametrize("data, match", [([], "with no experiments ('data' is empty)"),
                                         ([torch.zeros(1)], "data[0] is a Tensor")])
def test_malformed_reference_layout_is_one_line(tmp_path, digits, data, match):
    torch.save({"data": data, "accs_all_exps": {}}, tmp_path / "res.pt")
    refused(tmp_path / "res.pt", digits, match)


# --------------------------------------------------------------------------- the space rule


def test_pixels_overshooting_by_one_percent_are_pixels_kept_unclipped(tmp_path, digits):
    pix, _, y = real(digits)
    over = pix * 1.02 - 0.01  # [-0.01, 1.01]
    save_file({"images": over, "labels": y}, str(tmp_path / "s.safetensors"))
    for space, reason in (("auto", "pixel (auto: values fill [0, 1])"), ("pixel", "pixel")):
        syn, used = fit_to_dataset(read_external(tmp_path / "s.safetensors"), digits, space, WHO)
        assert used == reason and torch.allclose(syn.images, normalise(digits, over), atol=1e-6)


@pytest.mark.parametrize("case", ["normalised inside [0, 1]", "low-contrast pixels", "overshoot 10%"])
def test_ambiguous_values_are_refused_asking_for_file_space(tmp_path, digits, case):
    pix, norm, y = real(digits)
    x = {"normalised inside [0, 1]": (norm - norm.min()) / (norm.max() - norm.min()) * 0.8 + 0.1,
         "low-contrast pixels": pix * 0.5 + 0.25,
         "overshoot 10%": pix * 1.2 - 0.1}[case]
    save_file({"images": x, "labels": y}, str(tmp_path / "s.safetensors"))
    refused(tmp_path / "s.safetensors", digits, "cannot tell the images' space")
    refused(tmp_path / "s.safetensors", digits, "--set file.space=pixel or --set file.space=normalized")
    syn, used = fit_to_dataset(read_external(tmp_path / "s.safetensors"), digits, "normalized", WHO)
    assert used == "normalized" and torch.equal(syn.images, x)  # a declared space decides


def test_declared_pixels_far_outside_the_unit_range_are_refused(tmp_path, digits):
    _, norm, y = real(digits)
    save_file({"images": norm, "labels": y}, str(tmp_path / "s.safetensors"))
    refused(tmp_path / "s.safetensors", digits, "space 'pixel' needs values in [0, 1] (at most 0.25 outside)",
            space="pixel")


# --------------------------------------------------------------------------- ZCA


def test_mtt_images_zca_needs_the_zca_condition_and_is_whitened_there(tmp_path, digits, white):
    pix, _, y = real(digits)
    inverse = pix * 1.4 - 0.2  # MTT's ZCA inverse is not held to [0, 1]
    folder = tmp_path / "mtt"
    folder.mkdir()
    torch.save(inverse, folder / "images_zca_best.pt")
    torch.save(y, folder / "labels_best.pt")
    refused(folder, digits, "made for ZCA-whitened data (images_zca_best.pt is MTT's ZCA inverse")
    refused(folder, digits, "evaluate it under --conditions zca")
    syn, used = fit_to_dataset(read_external(folder), white, "auto", WHO)
    assert used == "pixel (MTT's ZCA inverse, images_zca_best.pt)"
    assert torch.allclose(syn.images, white.zca(inverse), atol=1e-5)
    syn, used = fit_to_dataset(read_external(folder), digits, "pixel", WHO)  # the user's word wins
    assert used == "pixel" and torch.allclose(syn.images, normalise(digits, inverse), atol=1e-6)


@pytest.mark.parametrize("metadata", [{"space": "zca"}, {"space": "normalized", "conditions": "zca"}],
                         ids=["space-zca", "exported-from-a-zca-run"])
def test_a_whitened_file_needs_the_zca_condition_and_is_used_as_is_there(tmp_path, digits, white, metadata):
    pix, _, y = real(digits)
    whitened = white.zca(pix)
    save_file({"images": whitened, "labels": y}, str(tmp_path / "w.safetensors"), metadata=metadata)
    refused(tmp_path / "w.safetensors", digits, "evaluate it under --conditions zca")
    syn, used = fit_to_dataset(read_external(tmp_path / "w.safetensors"), white, "auto", WHO)
    assert used.startswith("zca (declared in the file") and torch.equal(syn.images, whitened)


def test_spaces_under_the_zca_condition(tmp_path, digits, white):
    pix, norm, y = real(digits)
    save_file({"images": norm, "labels": y}, str(tmp_path / "n.safetensors"))
    path = tmp_path / "n.safetensors"
    refused(path, digits, "file.space=zca", space="zca")  # declared zca, clean data
    # outside [0, 1]: normalised or whitened, the values cannot say
    refused(path, white, "--set file.space=normalized or --set file.space=zca")
    syn, _ = fit_to_dataset(read_external(path), white, "normalized", WHO)
    assert torch.allclose(syn.images, white.zca(pix), atol=1e-4)  # back to pixels, then whitened
    syn, _ = fit_to_dataset(read_external(path), white, "zca", WHO)
    assert torch.equal(syn.images, norm)


def test_a_zca_set_on_clean_data_is_one_line_through_the_cli(ddb, tmp_path, digits):
    pix, _, y = real(digits)
    (tmp_path / "mtt").mkdir()
    torch.save(pix, tmp_path / "mtt" / "images_zca_best.pt")
    torch.save(y, tmp_path / "mtt" / "labels_best.pt")
    res, _ = run(ddb, tmp_path, tmp_path / "mtt")
    one_line_exit_2(res, tmp_path, "--conditions zca", "images_zca_best.pt")


# --------------------------------------------------------------------------- learned lr, bad values


@pytest.mark.parametrize("given", ["0.05", "0.05,0.1"])
def test_explicit_eval_lr_beside_a_learned_lr_is_an_error_naming_both(ddb, tmp_path, digits, given):
    pix, _, y = real(digits)
    save_file({"images": pix, "labels": y, "lr": torch.tensor(0.03)}, str(tmp_path / "s.safetensors"))
    res, _ = run(ddb, tmp_path, tmp_path / "s.safetensors", "--set", f"eval.lr={given}")
    one_line_exit_2(res, tmp_path, "learned lr 0.03", f"--set eval.lr={given}", str(tmp_path / "s.safetensors"))


BAD = {
    "negative label": (lambda p, y: {"images": p, "labels": y - 1}, "labels range -1..8; class indices start at 0"),
    "huge label": (lambda p, y: {"images": p, "labels": y + 10**12}, "outside [0, 10)"),
    "sparse images": (lambda p, y: {"images": p.to_sparse(), "labels": y}, "images is a torch.sparse_coo tensor"),
    "sparse labels": (lambda p, y: {"images": p, "labels": y.to_sparse()}, "labels is a torch.sparse_coo tensor"),
    "meta images": (lambda p, y: {"images": torch.empty(10, 1, 8, 8, device="meta"), "labels": y},
                    "images is a meta tensor"),
    "complex labels": (lambda p, y: {"images": p, "labels": y.to(torch.complex64)}, "labels have dtype torch.complex64"),
    "bool lr": (lambda p, y: {"images": p, "labels": y, "lr": True}, "lr is a bool"),
    "complex lr": (lambda p, y: {"images": p, "labels": y, "lr": torch.tensor(0.1 + 0.2j)}, "lr has dtype"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_are_one_line_errors_not_tracebacks(ddb, tmp_path, digits, case):
    make, match = BAD[case]
    pix, _, y = real(digits)
    torch.save(make(pix, y), tmp_path / "bad.pt")
    res, _ = run(ddb, tmp_path, tmp_path / "bad.pt")
    one_line_exit_2(res, tmp_path, match, str(tmp_path / "bad.pt"))


def test_numpy_scalars_and_big_endian_arrays_are_read(tmp_path, digits):
    pix, _, y = real(digits)
    torch.save({"images": pix, "labels": y.numpy(), "lr": np.float32(0.25)}, tmp_path / "s.pt")
    ext = read_external(tmp_path / "s.pt")
    assert ext.lr == pytest.approx(0.25) and torch.equal(ext.labels, y)
    np.savez(tmp_path / "b.npz", images=pix.numpy().astype(">f4"), labels=y.numpy().astype(">i8"))
    ext = read_external(tmp_path / "b.npz")
    assert torch.equal(ext.images, pix) and torch.equal(ext.labels, y)


def test_a_method_that_learns_its_lr_says_so_beside_an_explicit_eval_lr(ddb, tmp_path):
    """MTT's learned lr replaces eval.lr (the reference's precedence): said at planning."""
    res = ddb("run", "--methods", "mtt,dm", "--ipc", "1", "--seeds", "0", "--set", "eval.lr=0.05",
              "--dry-run", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 0, res.err
    assert "mtt's sets carry a learned lr, which replaces --set eval.lr=0.05" in res.err
    assert "dm's" not in res.err
    quiet = ddb("run", "--methods", "mtt", "--ipc", "1", "--seeds", "0", "--dry-run", "--store", str(tmp_path / "r.sqlite"))
    assert "learned lr" not in quiet.err
