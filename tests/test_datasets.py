"""Built-in dataset loaders: real data where the shared copies exist, official-format fixtures
written here otherwise, the cache, offline errors and the (local) download path."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import shutil
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA as SHARED

from ddbench.builtins.datasets import imagefolder
from ddbench.builtins.datasets import plugin as builtin
from ddbench.builtins.datasets.cifar import CIFAR10, CIFAR100
from ddbench.builtins.datasets.digits import Digits
from ddbench.builtins.datasets.imagefolder import ImageFolder
from ddbench.builtins.datasets.mnist import MNIST, FashionMNIST
from ddbench.builtins.datasets.svhn import SVHN
from ddbench.data import cache
from ddbench.errors import DDBenchError

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


def pixels(bundle, x: torch.Tensor) -> torch.Tensor:
    """Normalised images back to integer 0..255 pixel values."""
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.int64)


def no_decode(*args, **kwargs):
    raise AssertionError("decoded again although the cache should have been used")


# --------------------------------------------------------------------------- registration


def test_register_datasets_registers_every_builtin():
    found = []
    builtin.register_datasets(register=found.append)
    names = [c.name for c in found]
    assert names == ["digits", "mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "imagefolder"]
    for cls in found:
        assert cls.kind == "datasets"
        assert cls.summary(), f"{cls.__name__} has no docstring summary"
        assert cls.takes_argument == (cls.name == "imagefolder")


def test_imagefolder_params_are_typed_for_the_cli():
    from ddbench.params import build, fields

    info = {f.name: f for f in fields(ImageFolder.Params)}
    assert (info["size"].type_name, info["size"].default) == ("int", 32)
    assert (info["grayscale"].type_name, info["grayscale"].default) == ("bool", False)
    assert info["stats"].default == "train"
    assert build(ImageFolder.Params, {"stats": "cifar10"}, "imagefolder").stats == "cifar10"
    with pytest.raises(DDBenchError, match="invalid value 'cifar' for imagefolder.stats: expected train or one of mnist"):
        build(ImageFolder.Params, {"stats": "cifar"}, "imagefolder")


# --------------------------------------------------------------------------- digits


def test_digits_fixed_stratified_split(tmp_path):
    a = Digits().load(None, tmp_path, False)
    b = Digits().load(None, tmp_path, False)
    assert a.name == "digits"
    assert a.x_train.shape == (1257, 1, 8, 8) and a.x_test.shape == (540, 1, 8, 8)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert a.classes == [str(i) for i in range(10)]
    assert a.dsa_strategy == "color_crop_cutout_scale_rotate"
    # the same split every time
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    # stratified: every class is split 70/30 up to rounding
    total = torch.bincount(torch.cat([a.y_train, a.y_test]), minlength=10)
    test = torch.bincount(a.y_test, minlength=10)
    assert ((test.float() - 0.3 * total.float()).abs() <= 1).all()
    # pixels are the scaled 0..16 values, normalised with the train split's own statistics
    px = a.denormalize(a.x_train) * 16
    assert torch.allclose(px, px.round(), atol=1e-4) and px.max() == 16
    assert a.x_train.mean().abs() < 1e-5 and abs(a.x_train.std().item() - 1) < 1e-3


# --------------------------------------------------------------------------- MNIST (real)


@pytest.fixture
def shared_mnist(tmp_path):
    raw = SHARED / "MNIST" / "raw"
    gz = sorted(raw.glob("*-ubyte.gz")) if raw.is_dir() else []
    if len(gz) != 4:
        pytest.skip(f"real MNIST not available: no 4 *-ubyte.gz files in {raw}")
    dest = tmp_path / "data" / "MNIST" / "raw"
    dest.mkdir(parents=True)
    for f in gz:
        (dest / f.name).symlink_to(f)
    return tmp_path / "data"


def test_real_mnist_from_gz(shared_mnist, monkeypatch):
    m = MNIST().load(None, shared_mnist, False)
    assert m.name == "mnist" and m.classes == [str(i) for i in range(10)]
    assert m.x_train.shape == (60000, 1, 28, 28) and m.x_test.shape == (10000, 1, 28, 28)
    assert m.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert abs(m.denormalize(m.x_train).mean().item() - 0.1307) < 5e-4
    assert m.mean == (0.1307,) and m.std == (0.3081,)
    assert m.dsa_strategy == "color_crop_cutout_scale_rotate"
    # gunzipped next to the .gz files, which stay
    raw = shared_mnist / "MNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 60000 * 28 * 28
    assert (raw / "train-images-idx3-ubyte.gz").is_symlink()
    # the second load comes from the cache: torchvision is not asked again
    monkeypatch.setattr(MNIST, "decode", no_decode)
    again = MNIST().load(None, shared_mnist, False)
    assert torch.equal(again.y_train, m.y_train) and torch.equal(again.x_test, m.x_test)


# --------------------------------------------------------------------------- image folders


@pytest.fixture(scope="module")
def cifar_jpeg_subset(tmp_path_factory):
    """10 train + 5 test JPEGs per class from the real CIFAR-10 JPEG export."""
    zpath = SHARED / "cifar10-jpeg.zip"
    if not zpath.is_file():
        pytest.skip(f"real CIFAR-10 JPEG zip not available: {zpath} is absent")
    out = tmp_path_factory.mktemp("c10")
    per = {"train": 10, "test": 5}
    taken: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(zpath) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) != 4 or not parts[3].endswith(".jpg"):
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < per[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                zf.extract(name, out)
    return out / "cifar10"


def test_imagefolder_real_cifar10_jpegs(cifar_jpeg_subset, tmp_path, monkeypatch):
    from PIL import Image

    spec = ImageFolder(ImageFolder.Params())
    d = spec.load(str(cifar_jpeg_subset), tmp_path, False)
    assert d.name == f"imagefolder:{cifar_jpeg_subset}"
    assert d.classes == CIFAR10_CLASSES
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (50, 3, 32, 32)
    assert d.class_counts() == [10] * 10
    assert d.y_train.tolist() == [c for c in range(10) for _ in range(10)]
    assert d.dsa_strategy == "color_crop_cutout_flip_scale_rotate"
    # the pixels are the JPEG's (compare with PIL; both use libjpeg)
    first = sorted((cifar_jpeg_subset / "train" / "airplane").iterdir())[0]
    ref = torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1)
    assert (pixels(d, d.x_train[:1])[0] - ref.long()).abs().max() <= 2
    # mean/std are the train split's own
    x01 = d.denormalize(d.x_train)
    assert torch.allclose(x01.mean(dim=(0, 2, 3)), torch.tensor(d.mean), atol=1e-4)
    assert torch.allclose(x01.std(dim=(0, 2, 3)), torch.tensor(d.std), atol=1e-3)

    # cached: a second load does not decode, and gives the same tensors
    entries = list((tmp_path / ".ddbench-cache").glob("*.safetensors"))
    assert len(entries) == 1 and not list((tmp_path / ".ddbench-cache").glob("*.tmp"))
    monkeypatch.setattr(imagefolder, "decode_images", no_decode)
    again = spec.load(str(cifar_jpeg_subset), tmp_path, False)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    assert again.classes == d.classes and again.mean == d.mean

    # other parameters are another cache entry (and decode)
    with pytest.raises(AssertionError, match="decoded again"):
        ImageFolder(ImageFolder.Params(size=16)).load(str(cifar_jpeg_subset), tmp_path, False)
    monkeypatch.undo()
    small = ImageFolder(ImageFolder.Params(size=16)).load(
        str(cifar_jpeg_subset), tmp_path, False
    )
    assert small.x_train.shape == (100, 3, 16, 16) and small.x_test.shape == (50, 3, 16, 16)
    gray = ImageFolder(ImageFolder.Params(grayscale=True)).load(
        str(cifar_jpeg_subset), tmp_path, False
    )
    assert gray.x_train.shape == (100, 1, 32, 32) and len(gray.mean) == 1

    # stats=cifar10: the reference constants on the same cached pixels (no decode)
    monkeypatch.setattr(imagefolder, "decode_images", no_decode)
    ref = ImageFolder(ImageFolder.Params(stats="cifar10")).load(str(cifar_jpeg_subset), tmp_path, False)
    assert ref.mean == (0.4914, 0.4822, 0.4465) and ref.std == (0.2023, 0.1994, 0.2010)
    assert torch.allclose(ref.denormalize(ref.x_train), x01, atol=1e-5)  # same pixels, other scale
    assert ref.x_train.std() > 1.15 * d.x_train.std()  # the reference std is ~0.2, the data's ~0.25
    with pytest.raises(DDBenchError, match="stats=cifar10 are for 3-channel images, these have 1"):
        ImageFolder(ImageFolder.Params(grayscale=True, stats="cifar10")).load(str(cifar_jpeg_subset), tmp_path, False)
    gray_ref = ImageFolder(ImageFolder.Params(grayscale=True, stats="mnist")).load(str(cifar_jpeg_subset), tmp_path, False)
    assert gray_ref.mean == (0.1307,)


def _write_image(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder_formats_resize_and_cache_invalidation(tmp_path, monkeypatch):
    src = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    # a 20x40 PNG whose centre square is white: resized to 8x16, centre-cropped to 8x8
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 4:36] = 255
    _write_image(src / "train" / "cat" / "a.png", wide)
    _write_image(src / "train" / "cat" / "sub" / "b.bmp", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    _write_image(src / "train" / "dog" / "c.jpg", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    _write_image(src / "test" / "cat" / "d.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    _write_image(src / "test" / "dog" / "e.gif", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (src / "train" / "dog" / "notes.txt").write_text("not an image")
    (src / "train" / "dog" / ".hidden.jpg").write_bytes(b"junk")

    root = tmp_path / "root"
    d = ImageFolder(ImageFolder.Params(size=8)).load(str(src), root, False)
    assert d.classes == ["cat", "dog"]
    assert d.y_train.tolist() == [0, 0, 1] and d.y_test.tolist() == [0, 1]
    assert d.x_train.shape == (3, 3, 8, 8) and d.x_test.shape == (2, 3, 8, 8)
    assert (pixels(d, d.x_train[:1]) == 255).all()  # centre crop of the wide PNG: all white

    # adding a file changes the fingerprint: decoded again, the stale entry replaced
    _write_image(src / "train" / "dog" / "f.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    monkeypatch.setattr(imagefolder, "decode_images", no_decode)
    with pytest.raises(AssertionError, match="decoded again"):
        ImageFolder(ImageFolder.Params(size=8)).load(str(src), root, False)
    monkeypatch.undo()
    d2 = ImageFolder(ImageFolder.Params(size=8)).load(str(src), root, False)
    assert d2.y_train.tolist() == [0, 0, 1, 1]
    assert len(list((root / ".ddbench-cache").glob("*.safetensors"))) == 1


def test_imagefolder_errors(tmp_path):
    load = ImageFolder(ImageFolder.Params()).load
    missing = tmp_path / "nope"
    with pytest.raises(DDBenchError, match=f"folder {missing} does not exist"):
        load(str(missing), tmp_path, False)
    with pytest.raises(DDBenchError, match="needs a path"):
        load(None, tmp_path, False)

    src = tmp_path / "src"
    img = np.zeros((4, 4, 3), np.uint8)
    _write_image(src / "train" / "a" / "0.png", img)
    _write_image(src / "train" / "b" / "0.png", img)
    with pytest.raises(DDBenchError, match=f"no folder {src / 'test'}"):
        load(str(src), tmp_path, False)
    _write_image(src / "test" / "a" / "0.png", img)
    _write_image(src / "test" / "c" / "0.png", img)
    with pytest.raises(DDBenchError, match="missing in test: b; not in train: c") as e:
        load(str(src), tmp_path, False)
    assert "\n" not in str(e.value)
    shutil.rmtree(src / "test" / "c")
    _write_image(src / "test" / "b" / "0.png", img)
    (src / "train" / "b" / "1.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DDBenchError, match=r"cannot decode image .*1\.jpg"):
        load(str(src), tmp_path, False)


# --------------------------------------------------------------------------- official formats


class Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING), as the official CIFAR files
    were written: they load as ``str`` with encoding="latin1" (torchvision) and as
    ``bytes`` keys (b"data") with encoding="bytes", like the real ones."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def test_py2_pickle_fixture_has_the_official_key_types(tmp_path):
    write_py2_pickle(tmp_path / "b", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [3]})
    assert set(pickle.loads((tmp_path / "b").read_bytes(), encoding="bytes")) == {b"data", b"labels"}
    assert set(pickle.loads((tmp_path / "b").read_bytes(), encoding="latin1")) == {"data", "labels"}


def test_cifar10_official_pickles(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    train_imgs, train_labels = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, 4)]
        write_py2_pickle(folder / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(), b"labels": y,
            b"data": x.reshape(4, 3072), b"filenames": [b"x.png"] * 4,
        })
        train_imgs.append(x)
        train_labels += y
    xt = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    write_py2_pickle(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1", b"labels": [7, 0, 9],
        b"data": xt.reshape(3, 3072), b"filenames": [b"x.png"] * 3,
    })
    write_py2_pickle(folder / "batches.meta", {
        b"num_cases_per_batch": 10000, b"num_vis": 3072,
        b"label_names": [c.encode() for c in CIFAR10_CLASSES],
    })

    d = CIFAR10().load(None, tmp_path, False)
    assert d.name == "cifar10" and d.classes == CIFAR10_CLASSES
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert torch.equal(pixels(d, d.x_train), torch.from_numpy(np.concatenate(train_imgs)).long())
    assert torch.equal(pixels(d, d.x_test), torch.from_numpy(xt).long())
    assert d.y_train.tolist() == train_labels and d.y_test.tolist() == [7, 0, 9]
    assert d.mean == (0.4914, 0.4822, 0.4465) and d.std == (0.2023, 0.1994, 0.2010)
    assert d.dsa_strategy == "color_crop_cutout_flip_scale_rotate"

    monkeypatch.setattr(CIFAR10, "decode", no_decode)
    assert torch.equal(CIFAR10().load(None, tmp_path, False).x_train, d.x_train)


def test_cifar100_official_pickles(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    x = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    xt = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    for name, imgs, fine in (("train", x, [0, 99, 5, 42, 42, 7]), ("test", xt, [99, 1])):
        write_py2_pickle(folder / name, {
            b"filenames": [b"x.png"] * len(imgs), b"batch_label": name.encode(),
            b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
            b"data": imgs.reshape(len(imgs), 3072),
        })
    fine_names = [f"class{i:02d}" for i in range(100)]
    write_py2_pickle(folder / "meta", {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
    })
    d = CIFAR100().load(None, tmp_path, False)
    assert d.classes == fine_names and d.num_classes == 100
    assert d.y_train.tolist() == [0, 99, 5, 42, 42, 7] and d.y_test.tolist() == [99, 1]
    assert torch.equal(pixels(d, d.x_train), torch.from_numpy(x).long())
    assert torch.equal(pixels(d, d.x_test), torch.from_numpy(xt).long())
    assert d.mean == (0.5071, 0.4866, 0.4409)


def test_svhn_official_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    folder = tmp_path / "svhn"
    folder.mkdir()
    data = {}
    for split, n in (("train", 5), ("test", 3)):
        imgs = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)  # N,C,H,W
        digits = rng.integers(0, 10, n)
        digits[0] = 0
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)  # 10 means 0
        savemat(folder / f"{split}_32x32.mat", {"X": imgs.transpose(2, 3, 1, 0), "y": y})
        data[split] = (imgs, digits)
    d = SVHN().load(None, tmp_path, False)
    assert d.classes == [str(i) for i in range(10)]
    assert d.dsa_strategy == "color_crop_cutout_scale_rotate"
    assert d.x_train.shape == (5, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert torch.equal(pixels(d, d.x_train), torch.from_numpy(data["train"][0]).long())
    assert torch.equal(pixels(d, d.x_test), torch.from_numpy(data["test"][0]).long())
    assert d.y_train.tolist() == data["train"][1].tolist() and d.y_train[0] == 0
    assert d.y_test.tolist() == data["test"][1].tolist()


def _idx(images: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    n, h, w = images.shape
    img = struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes()
    lab = struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes()
    return img, lab


def write_idx_gz(folder: Path, seed: int = 4) -> dict[str, np.ndarray]:
    """A tiny MNIST-format dataset (12 train, 6 test), gzipped, official file names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", 12), ("t10k", 6)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        img, lab = _idx(x, y)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(img))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab))
        arrays[prefix] = (x, y)
    return arrays


def test_fashionmnist_from_gz_only(tmp_path):
    arrays = write_idx_gz(tmp_path / "FashionMNIST" / "raw")
    d = FashionMNIST().load(None, tmp_path, False)
    assert d.classes[0] == "T-shirt/top" and len(d.classes) == 10
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (6, 1, 28, 28)
    assert torch.equal(pixels(d, d.x_train)[:, 0], torch.from_numpy(arrays["train"][0]).long())
    assert d.y_test.tolist() == arrays["t10k"][1].tolist()
    assert d.mean == (0.2861,) and d.std == (0.3530,)
    assert d.dsa_strategy == "color_crop_cutout_flip_scale_rotate"


# --------------------------------------------------------------------------- missing files


@pytest.mark.parametrize(
    "cls, folder, first",
    [
        (MNIST, "MNIST/raw", "train-images-idx3-ubyte[.gz]"),
        (FashionMNIST, "FashionMNIST/raw", "train-images-idx3-ubyte[.gz]"),
        (SVHN, "svhn", "train_32x32.mat"),
        (CIFAR10, "cifar-10-batches-py", "data_batch_1"),
        (CIFAR100, "cifar-100-python", "train"),
    ],
)
def test_missing_files_offline_is_one_line_naming_the_folder(tmp_path, cls, folder, first):
    with pytest.raises(DDBenchError) as e:
        cls().load(None, tmp_path, False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"dataset {cls.name!r}: no files in {tmp_path / folder} (expected {first}")
    assert "--download" in msg


def test_partly_missing_files_are_named(tmp_path):
    write_idx_gz(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DDBenchError, match=r"missing t10k-labels-idx1-ubyte in .*MNIST/raw"):
        MNIST().load(None, tmp_path, False)


def test_unreadable_files_are_a_one_line_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
              "test_batch", "batches.meta"]:
        (folder / f).write_bytes(b"not a pickle")
    with pytest.raises(DDBenchError, match=f"dataset 'cifar10': could not read the files in {folder}"):
        CIFAR10().load(None, tmp_path, False)


# --------------------------------------------------------------------------- download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """Serve a folder on 127.0.0.1 from a thread; yields (folder, base URL ending in /)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_mnist_download_fetches_checks_md5_and_loads(http_dir, tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    served, url = http_dir
    arrays = write_idx_gz(served)
    # these files are not the official MNIST, so their md5 goes where torchvision looks
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", [(f, _md5(served / f)) for f, _ in tvd.MNIST.resources])
    root = tmp_path / "root"
    d = MNIST().load(None, root, True)
    assert d.x_train.shape == (12, 1, 28, 28)
    assert torch.equal(pixels(d, d.x_test)[:, 0], torch.from_numpy(arrays["t10k"][0]).long())
    assert d.y_train.tolist() == arrays["train"][1].tolist()
    assert (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    # present now: loads offline
    assert torch.equal(MNIST().load(None, root, False).y_test, d.y_test)


def test_mnist_download_with_wrong_md5_fails_and_leaves_nothing(http_dir, tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    served, url = http_dir
    write_idx_gz(served)
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", [(f, "0" * 32) for f, _ in tvd.MNIST.resources])
    root = tmp_path / "root"
    with pytest.raises(DDBenchError) as e:
        MNIST().load(None, root, True)
    msg = str(e.value)
    assert msg.startswith(f"dataset 'mnist': download from {url} failed") and "\n" not in msg
    assert list((root / "MNIST" / "raw").iterdir()) == []  # no unverified file to load later
    with pytest.raises(DDBenchError, match="no files in"):
        MNIST().load(None, root, False)


def test_download_from_unreachable_server_is_one_line(tmp_path, monkeypatch):
    import socket

    import torchvision.datasets as tvd

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(tvd.CIFAR10, "url", url)
    with pytest.raises(DDBenchError) as e:
        CIFAR10().load(None, tmp_path, True)
    msg = str(e.value)
    assert msg.startswith(f"dataset 'cifar10': download from {url} failed") and "\n" not in msg
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()


# --------------------------------------------------------------------------- cache


def _raw(n: int = 3) -> cache.RawSplits:
    g = torch.Generator().manual_seed(0)
    return cache.RawSplits(
        torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g),
        torch.arange(n, dtype=torch.int64),
        torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=g),
        torch.tensor([1, 0]),
        ["a", "b", "c ✓"],
    )


def test_cache_roundtrip_and_corrupt_entry(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    fp = cache.fingerprint([src])
    calls = []

    def decode():
        calls.append(1)
        return _raw()

    first = cache.cached(tmp_path, "toy", {"size": 4}, fp, decode)
    second = cache.cached(tmp_path, "toy", {"size": 4}, fp, decode)
    assert len(calls) == 1
    assert second.classes == ["a", "b", "c ✓"] and torch.equal(second.x_train, first.x_train)
    assert second.x_train.dtype == torch.uint8 and second.y_test.dtype == torch.int64
    (entry,) = (tmp_path / ".ddbench-cache").glob("*.safetensors")
    entry.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        third = cache.cached(tmp_path, "toy", {"size": 4}, fp, decode)
    assert len(calls) == 2 and torch.equal(third.x_test, first.x_test)
    # a changed source is a different key
    src.write_bytes(b"xy")
    assert cache.fingerprint([src]) != fp
