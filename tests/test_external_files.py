"""Released distilled sets read from files: every format fitted to the real digits bundle,
the space rules, and each bad input refused with one line naming the file."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ddbench.builtins.datasets.digits import Digits
from ddbench.data import conditions
from ddbench.data.released import fit_to_dataset, read_external
from ddbench.errors import DDBenchError
from ddbench.storage.atomic import content_hash

WHO = "paper-x"
N = 20


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return Digits().load(None, tmp_path_factory.mktemp("data"), False)


def normalised(data, x):
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (x - mean) / std


def pixel_set(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, 1, 8, 8, generator=g), torch.arange(N) % 10


def fit(path, data, space="auto"):
    return fit_to_dataset(read_external(path), data, space, WHO)


def write(fmt, path: pathlib.Path, x, y, lr=None):
    """A set in one of the formats; returns what read_external is given."""
    if fmt == "safetensors":
        tensors = {"images": x, "labels": y} | ({} if lr is None else {"lr": torch.tensor(lr)})
        save_file(tensors, str(path / "set.safetensors"))
        return path / "set.safetensors"
    if fmt == "pt-dict":
        torch.save({"x": x, "y": y, "syn_lr": lr}, path / "set.pt")
        return path / "set.pt"
    if fmt == "pt-tuple":
        torch.save((x, y) if lr is None else (x, y, lr), path / "set.pth")
        return path / "set.pth"
    if fmt == "npz":
        extra = {} if lr is None else {"lr": np.array(lr)}
        np.savez(path / "set.npz", data=x.numpy(), targets=y.numpy(), **extra)
        return path / "set.npz"
    folder = path / "release"
    folder.mkdir()
    torch.save(x, folder / "images_best.pt")
    torch.save(y, folder / "labels_best.pt")
    if lr is not None:
        torch.save(torch.tensor(lr), folder / "lr_best.pt")
    return folder


FORMATS = {"safetensors": "safetensors", "pt-dict": "pt", "pt-tuple": "pt", "npz": "npz", "folder": "pt-folder"}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_round_trips_pixels_to_normalised_space(fmt, tmp_path, digits):
    x, y = pixel_set()
    ext = read_external(write(fmt, tmp_path, x, y, lr=0.02))
    assert ext.format == FORMATS[fmt] and ext.soft is None and ext.soft_kind is None
    syn, space = fit_to_dataset(ext, digits, "auto", WHO)
    assert space == "pixel (auto: values fill [0, 1])"
    assert syn.images.dtype == torch.float32
    assert torch.allclose(syn.images, normalised(digits, x), atol=1e-6)
    assert torch.equal(syn.labels, y) and syn.labels.dtype == torch.int64
    assert syn.lr == pytest.approx(0.02)


def test_normalised_file_is_used_as_is(tmp_path, digits):
    x = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    path = write("safetensors", tmp_path, x, torch.arange(N) % 10)
    syn, space = fit(path, digits)
    assert space == "normalized (auto: values beyond [-0.25, 1.25], so not pixels)"
    assert torch.equal(syn.images, x) and syn.lr is None
    ext = read_external(path)
    syn, space = fit_to_dataset(ext, digits, "normalized", WHO)
    assert space == "normalized" and torch.equal(syn.images, x)
    syn.images.add_(1)
    syn.labels.zero_()  # the caller may cache ext: changing a fitted set must not change it
    again, _ = fit_to_dataset(ext, digits, "normalized", WHO)
    assert torch.equal(again.images, x) and torch.equal(again.labels, torch.arange(N) % 10)


def test_space_declared_in_safetensors_metadata_is_honoured_under_auto(tmp_path, digits):
    x, y = pixel_set()  # every value in [0, 1]: auto alone would take these for pixels
    save_file({"images": x, "labels": y}, str(tmp_path / "s.safetensors"), metadata={"space": "normalized"})
    syn, space = fit(tmp_path / "s.safetensors", digits)
    assert space == "normalized (declared in the file)" and torch.equal(syn.images, x)
    syn, space = fit(tmp_path / "s.safetensors", digits, "pixel")  # an explicit space wins
    assert space == "pixel" and torch.allclose(syn.images, normalised(digits, x), atol=1e-6)
    save_file({"images": x, "labels": y}, str(tmp_path / "bad.safetensors"), metadata={"space": "rgb"})
    one_line_error(tmp_path / "bad.safetensors", digits, "metadata space 'rgb'; valid: pixel, normalized, zca")


def test_explicit_pixel_space_normalises_and_zca_whitens(tmp_path, digits):
    x, y = pixel_set()
    path = write("safetensors", tmp_path, x, y)
    syn, space = fit(path, digits, "pixel")
    assert space == "pixel" and torch.allclose(syn.images, normalised(digits, x), atol=1e-6)
    white = conditions.apply(digits, "zca", tmp_path)
    syn, _ = fit(path, white)
    assert torch.allclose(syn.images, white.zca(x), atol=1e-5)
    assert not torch.allclose(syn.images, normalised(digits, x), atol=1e-2)


def test_soft_labels_as_probabilities_and_as_logits(tmp_path, digits):
    x, _ = pixel_set()
    logits = torch.randn(N, 10, generator=torch.Generator().manual_seed(2)) * 3
    scores = logits.softmax(1) * 2  # non-negative, but rows sum to 2: not probabilities
    signed = logits.softmax(1) + torch.tensor([0.5, -0.5] + [0.0] * 8)  # rows sum to 1, some < 0
    cases = (("p", logits.softmax(1), "probs"), ("l", logits, "logits"), ("s", scores, "logits"),
             ("n", signed, "logits"))
    for name, soft, kind in cases:
        save_file({"images": x, "labels": soft}, str(tmp_path / f"{name}.safetensors"))
        ext = read_external(tmp_path / f"{name}.safetensors")
        assert ext.soft_kind == kind and ext.labels is None
        syn, _ = fit_to_dataset(ext, digits, "auto", WHO)
        assert syn.soft_kind == kind and torch.allclose(syn.soft_labels, soft)
        assert torch.equal(syn.labels, soft.argmax(1))


def test_hard_labels_and_soft_labels_key_are_both_kept(tmp_path, digits):
    x, y = pixel_set()
    soft = torch.full((N, 10), 0.1)
    save_file({"image": x, "label": y, "soft_labels": soft}, str(tmp_path / "s.safetensors"))
    syn, _ = fit(tmp_path / "s.safetensors", digits)
    assert torch.equal(syn.labels, y) and syn.soft_kind == "probs" and torch.equal(syn.soft_labels, soft)


def test_datm_folder_with_soft_logits_and_learned_lr(tmp_path, digits):
    x = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    logits = torch.randn(N, 10, generator=torch.Generator().manual_seed(4))
    torch.save(x.requires_grad_(), tmp_path / "images_best.pt")
    torch.save(logits, tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.01, requires_grad=True), tmp_path / "lr_best.pt")
    ext = read_external(tmp_path)
    assert ext.format == "pt-folder" and ext.soft_kind == "logits"
    syn, space = fit_to_dataset(ext, digits, "auto", WHO)
    assert space.startswith("normalized (auto")
    assert torch.equal(syn.images, x.detach()) and torch.equal(syn.labels, logits.argmax(1))
    assert syn.soft_kind == "logits" and syn.lr == pytest.approx(0.01)


def save_png(path: pathlib.Path, value: int, mode: str = "L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), value if mode == "L" else (value,) * 3).save(path)


def test_image_folder_with_class_names_any_case(tmp_path, digits):
    named = dataclasses.replace(digits, classes=["zero", "one", "two", "three", "four", "five",
                                                 "six", "seven", "eight", "nine"])
    save_png(tmp_path / "Three" / "a.png", 51)
    save_png(tmp_path / "Three" / "b.PNG", 102)
    save_png(tmp_path / "one" / "c.png", 204, mode="RGB")  # gray RGB: converted to 1 channel
    (tmp_path / "one" / "notes.txt").write_text("ignored")
    ext = read_external(tmp_path)
    assert ext.format == "folder" and ext.pixel_hint and ext.images.shape == (3, 3, 8, 8)
    syn, space = fit_to_dataset(ext, named, "auto", WHO)
    assert space == "pixel (image folder)"
    assert syn.labels.tolist() == [3, 3, 1]  # sorted folders: Three, one
    expected = torch.tensor([51, 102, 204]).float().view(3, 1, 1, 1).expand(3, 1, 8, 8) / 255
    assert torch.allclose(syn.images, normalised(digits, expected), atol=1e-5)


def test_image_folder_with_integer_class_folders(tmp_path, digits):
    named = dataclasses.replace(digits, classes=[f"c{i}" for i in range(10)])
    save_png(tmp_path / "7" / "a.jpg", 128)
    save_png(tmp_path / "02" / "b.png", 0)
    syn, _ = fit(tmp_path, named)
    assert syn.labels.tolist() == [2, 7]


def test_channels_last_uint8_npz_is_pixels(tmp_path, digits):
    pix = torch.randint(0, 256, (N, 8, 8, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    np.savez(tmp_path / "s.npz", images=pix.numpy(), labels=np.arange(N) % 10)
    syn, space = fit(tmp_path / "s.npz", digits)
    assert space == "pixel (uint8 images)"
    assert torch.allclose(syn.images, normalised(digits, pix.permute(0, 3, 1, 2).float() / 255), atol=1e-6)


def test_three_dimensional_images_on_one_channel_data(tmp_path, digits):
    x, y = pixel_set()
    syn, _ = fit(write("npz", tmp_path, x[:, 0], y), digits)
    assert torch.allclose(syn.images, normalised(digits, x), atol=1e-6)


# --------------------------------------------------------------------------- bad input


class RunsCode:
    """Unpickling this would create ``marker``: the file must be refused before that."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def bad_set(tmp_path, **changes):
    x, y = pixel_set()
    tensors = {"images": x, "labels": y} | changes
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    return tmp_path / "bad.safetensors"


def one_line_error(path, data, match, space="auto"):
    with pytest.raises(DDBenchError) as err:
        fit(path, data, space)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and match in msg, msg
    return msg


BAD_SETS = {
    "wrong shape": ({"images": torch.rand(N, 1, 7, 7)}, "images are 7x7, the dataset's are 8x8"),
    "five dims": ({"images": torch.rand(N, 1, 1, 8, 8)}, "images have shape (20, 1, 1, 8, 8)"),
    "three channels": ({"images": torch.rand(N, 3, 8, 8)}, "images have 3 channels, the dataset has 1"),
    "nan": ({"images": torch.full((N, 1, 8, 8), float("nan"))}, "NaN"),
    "label out of range": ({"labels": torch.arange(N)}, "labels range 0..19, outside [0, 10)"),
    "label count": ({"labels": torch.arange(N - 1) % 10}, "19 labels for 20 images"),
    "soft shape": ({"soft_labels": torch.rand(N, 5)}, "soft labels have shape (20, 5), expected (20, 10)"),
    "negative lr": ({"lr": torch.tensor(-0.1)}, "lr -0.1"),
    "pixels out of range": ({"images": torch.rand(N, 1, 8, 8) * 3}, "found [0"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_bad_set_is_refused_with_one_line(case, tmp_path, digits):
    changes, match = BAD_SETS[case]
    space = "pixel" if case == "pixels out of range" else "auto"
    assert one_line_error(bad_set(tmp_path, **changes), digits, match, space).startswith(f"{WHO}: ")


def test_bad_files_are_refused_with_one_line(tmp_path, digits):
    (tmp_path / "set.txt").write_text("x")
    one_line_error(tmp_path / "set.txt", digits, "unknown file type; accepted: .safetensors")
    one_line_error(tmp_path / "missing.pt", digits, "no such file or folder")
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", digits, "empty folder")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    one_line_error(tmp_path / "junk.pt", digits, "cannot be read")


def test_several_image_files_in_a_release_folder(tmp_path, digits):
    x, y = pixel_set()
    for name in ("images_best.pt", "images_zca_best.pt", "labels_best.pt"):
        torch.save(x if name.startswith("images") else y, tmp_path / name)
    one_line_error(tmp_path, digits, "images_best.pt, images_zca_best.pt")


def test_folder_with_unknown_class_names(tmp_path, digits):
    save_png(tmp_path / "cat" / "a.png", 10)
    save_png(tmp_path / "3" / "a.png", 10)
    msg = one_line_error(tmp_path, digits, "class folders cat are not classes of the dataset")
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in msg


def test_image_folder_is_never_normalised_space(tmp_path, digits):
    save_png(tmp_path / "3" / "a.png", 10)
    one_line_error(tmp_path, digits, "space 'normalized' does not apply", space="normalized")


def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, digits):
    marker = tmp_path / "marker"
    x, y = pixel_set()
    torch.save({"images": x, "labels": y, "extra": RunsCode(marker)}, tmp_path / "evil.pt")
    one_line_error(tmp_path / "evil.pt", digits, "refused: the file needs unpickling of arbitrary objects")
    assert not marker.exists()
    assert not list(tmp_path.glob("marker*"))


def test_npz_with_object_array_is_refused(tmp_path, digits):
    np.savez(tmp_path / "o.npz", images=np.array([RunsCode(tmp_path / "m")], dtype=object), labels=np.zeros(1))
    one_line_error(tmp_path / "o.npz", digits, "refused")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- content_hash


def test_content_hash_of_files_and_folders(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    data = bytes(range(256)) * 5000  # over one read chunk
    a.write_bytes(data)
    b.write_bytes(data)
    assert content_hash(a) == content_hash(b)
    b.write_bytes(data[:-1] + b"\x00")
    assert content_hash(a) != content_hash(b)

    folder = tmp_path / "release"
    (folder / "sub").mkdir(parents=True)
    (folder / "images_best.pt").write_bytes(b"images")
    (folder / "sub" / "labels_best.pt").write_bytes(b"labels")
    before = content_hash(folder)
    assert content_hash(folder) == before
    (folder / "sub" / "labels_best.pt").rename(folder / "sub" / "labels_last.pt")
    renamed = content_hash(folder)
    assert renamed != before
    (folder / "extra").write_bytes(b"")
    assert content_hash(folder) != renamed
    with pytest.raises(DDBenchError, match="no such file"):
        content_hash(tmp_path / "nothing")
