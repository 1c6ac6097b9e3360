"""Built-in datasets: digits, MNIST, FashionMNIST, SVHN, CIFAR-10/100 and image folders.

Files live where torchvision puts them under the data root (``--data-root``):
``MNIST/raw/``, ``FashionMNIST/raw/``, ``svhn/{train,test}_32x32.mat``,
``cifar-10-batches-py/``, ``cifar-100-python/``. ``digits`` ships with scikit-learn and
needs no files. ``imagefolder:PATH`` reads ``PATH/train/<class>/*`` and
``PATH/test/<class>/*``.

Every loader decodes its files once into uint8 tensors kept in
``<root>/.ddbench-cache/`` (see :mod:`ddbench.data.cache`); normalisation to float
happens after the cache. Missing files are an error that names the folder searched and
the files expected, unless ``download`` is set, in which case torchvision fetches them
(checking their md5).
"""

from __future__ import annotations

import errno
import functools
import gzip
import os
import pickle
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ddbench import hookimpl
from ddbench.components import DatasetSpec
from ddbench.data import cache
from ddbench.data.bundle import DataBundle
from ddbench.data.cache import RawSplits
from ddbench.errors import DDBenchError

#: DSA strategy without ``flip``: mirroring a digit can change its class (the reference's choice)
NO_FLIP = "color_crop_cutout_scale_rotate"
WITH_FLIP = "color_crop_cutout_flip_scale_rotate"

#: file suffixes ``imagefolder`` reads (case-insensitive); other files are ignored
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)

#: images read and decoded per batch by ``imagefolder``
DECODE_CHUNK = 4096


# --------------------------------------------------------------------------- helpers


def _fail(name: str, message: str) -> DDBenchError:
    return DDBenchError(f"dataset {name!r}: {message}")


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def channel_stats(x: torch.Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of ``x / scale``, ``x`` uint8 N,C,H,W.

    Computed from each channel's histogram of pixel values, so no float rounding.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"channel_stats expects uint8 images, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError("cannot compute statistics of an empty split")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = float(hist.sum())
        mean = float((hist * values).sum()) / n
        var = max(float((hist * (values - mean) ** 2).sum()) / n, 0.0)
        means.append(mean / scale)
        stds.append(var**0.5 / scale)
    return tuple(means), tuple(stds)


def to_bundle(
    name: str,
    raw: RawSplits,
    mean: Sequence[float],
    std: Sequence[float],
    dsa_strategy: str = WITH_FLIP,
    scale: float = 255.0,
) -> DataBundle:
    """Normalise decoded splits: float32 ``(x / scale - mean) / std`` per channel."""
    mean = tuple(float(m) for m in mean)
    # a constant channel has std 0: leave it unscaled rather than dividing by zero
    std = tuple(float(s) if s > 0 else 1.0 for s in std)
    if len(mean) != raw.x_train.shape[1] or len(std) != len(mean):
        raise ValueError(f"{len(mean)} channel statistics for {raw.x_train.shape[1]}-channel images")
    # (x / scale - mean) / std as one multiply-add (division is several times slower)
    a = torch.tensor([1.0 / (scale * sd) for sd in std], dtype=torch.float32).view(1, -1, 1, 1)
    b = torch.tensor([-mu / sd for mu, sd in zip(mean, std, strict=True)], dtype=torch.float32)
    b = b.view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(a).add_(b)

    return DataBundle(
        name=name,
        x_train=norm(raw.x_train),
        y_train=raw.y_train.to(torch.int64),
        x_test=norm(raw.x_test),
        y_test=raw.y_test.to(torch.int64),
        classes=list(raw.classes),
        mean=mean,
        std=std,
        dsa_strategy=dsa_strategy,
    )


def _params_dict(params) -> dict[str, Any]:
    if params is None:
        return {}
    from dataclasses import asdict

    return asdict(params)


# --------------------------------------------------------------------------- digits


class Digits(DatasetSpec):
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); no download needed.

    Pixels 0..16 are scaled to [0, 1]. The split is fixed and stratified:
    ``train_test_split(test_size=0.3, stratify=y, random_state=0)``, giving 1,257 train
    and 540 test images, each split kept in the original order. Normalisation uses the
    per-channel mean/std of the train split. DSA strategy without flip.
    """

    name = "digits"
    test_size: ClassVar[float] = 0.3
    split_seed: ClassVar[int] = 0

    def load(self, arg: str | None, root: Path, download: bool) -> DataBundle:
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        images = torch.from_numpy(np.asarray(d.images).round().astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(np.asarray(d.target).astype(np.int64))
        idx = np.arange(len(labels))
        tr, te = train_test_split(
            idx, test_size=self.test_size, stratify=d.target, random_state=self.split_seed
        )
        tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
        raw = RawSplits(
            images[tr].contiguous(), labels[tr], images[te].contiguous(), labels[te],
            [str(c) for c in d.target_names],
        )
        mean, std = channel_stats(raw.x_train, 16.0)
        return to_bundle(self.name, raw, mean, std, NO_FLIP, scale=16.0)


# --------------------------------------------------------------------------- file-based datasets


class _FileDataset(DatasetSpec):
    """Shared flow: find files (download when asked), decode through the cache, normalise."""

    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    dsa_strategy: ClassVar[str] = WITH_FLIP

    # -- per dataset
    def folder(self, root: Path) -> Path:
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    def expected(self) -> list[str]:
        """File names the decoder reads, relative to ``folder``."""
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    def expected_text(self) -> str:
        return ", ".join(self.expected())

    def prepare(self, folder: Path) -> None:
        """Make present files readable (e.g. gunzip); runs before the existence check."""

    def urls(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    def download(self, root: Path) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    def download_creates(self, root: Path) -> list[Path]:
        """Paths a download may create: removed again when it fails."""
        folder = self.folder(root)
        return [folder / f for f in self.expected()]

    def decode(self, root: Path) -> RawSplits:
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    # -- shared
    def missing(self, folder: Path) -> list[str]:
        return [f for f in self.expected() if not (folder / f).is_file()]

    def load(self, arg: str | None, root: Path, download: bool) -> DataBundle:
        root = Path(root).expanduser()
        folder = self.folder(root)
        self.prepare(folder)
        missing = self.missing(folder)
        if missing and download:
            self._download(root, folder)
            self.prepare(folder)
            missing = self.missing(folder)
            if missing:
                raise _fail(self.name, f"download finished but {', '.join(missing)} is still missing in {folder}")
        if missing:
            what = "no files" if len(missing) == len(self.expected()) else f"missing {', '.join(missing)}"
            raise _fail(
                self.name,
                f"{what} in {folder} (expected {self.expected_text()}); "
                "put them there or pass --download",
            )
        sources = cache.fingerprint(folder / f for f in self.expected())
        raw = cache.cached(root, self.name, _params_dict(self.params), sources,
                           lambda: self._decode(root, folder))
        return to_bundle(self.name, raw, self.mean, self.std, self.dsa_strategy)

    def _decode(self, root: Path, folder: Path) -> RawSplits:
        try:
            raw = self.decode(root)
            raw.check()
        except DDBenchError:
            raise
        except Exception as exc:  # corrupt or foreign files: one line naming them
            raise _fail(self.name, f"could not read the files in {folder}: {_one_line(exc)}") from exc
        return raw

    def _download(self, root: Path, folder: Path) -> None:
        candidates = self.download_creates(root)
        before = {p for p in candidates if p.exists()}
        try:
            self.download(root)
        except BaseException as exc:
            # leave no partial or unverified file behind for a later offline load to pick up
            for p in candidates:
                if p not in before and p.is_file():
                    try:
                        p.unlink()
                    except OSError:
                        pass
            if not isinstance(exc, Exception):  # KeyboardInterrupt and the like
                raise
            raise _fail(
                self.name,
                f"download from {' or '.join(self.urls())} failed: {_one_line(exc)}; "
                f"put the files in {folder} yourself",
            ) from None


# --------------------------------------------------------------------------- MNIST-style


def _tv_datasets():
    import torchvision.datasets

    return torchvision.datasets


def gunzip_next_to(gz: Path) -> Path:
    """Decompress ``x.gz`` into ``x`` in the same folder, atomically; returns ``x``."""
    target = gz.with_suffix("")
    tmp = cache.temp_name(target)
    try:
        with open(tmp, "xb") as out, gzip.open(gz, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


class _IdxDataset(_FileDataset):
    """MNIST-format (idx) datasets through torchvision; ``.gz`` files are gunzipped first."""

    tv_class: ClassVar[str] = ""
    dsa_strategy = WITH_FLIP

    def _tv(self):
        return getattr(_tv_datasets(), self.tv_class)

    def folder(self, root: Path) -> Path:
        return root / self.tv_class / "raw"

    def _resources(self) -> list[str]:
        return [fname for fname, _md5 in self._tv().resources]

    def expected(self) -> list[str]:
        return [f.removesuffix(".gz") for f in self._resources()]

    def expected_text(self) -> str:
        return ", ".join(f"{f}[.gz]" for f in self.expected())

    def prepare(self, folder: Path) -> None:
        # torchvision reads the uncompressed files; its own download gunzips the same way
        for name in self.expected():
            gz = folder / f"{name}.gz"
            if not (folder / name).is_file() and gz.is_file():
                try:
                    gunzip_next_to(gz)
                except (OSError, EOFError) as exc:
                    hint = (
                        "copy the files to a writable data root"
                        if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EROFS
                        else "the file looks damaged: replace it"
                    )
                    raise _fail(
                        self.name, f"cannot decompress {gz} next to itself ({_one_line(exc)}); {hint}"
                    ) from None

    def urls(self) -> list[str]:
        return list(self._tv().mirrors)

    def download(self, root: Path) -> None:
        self._tv()(str(root), train=True, download=True)

    def download_creates(self, root: Path) -> list[Path]:
        folder = self.folder(root)
        return [folder / f for f in self.expected()] + [folder / f for f in self._resources()]

    def classes(self) -> list[str]:
        return list(self._tv().classes)

    def decode(self, root: Path) -> RawSplits:
        tv = self._tv()
        tr = tv(str(root), train=True, download=False)
        te = tv(str(root), train=False, download=False)
        return RawSplits(
            tr.data.to(torch.uint8).unsqueeze(1).contiguous(), tr.targets.to(torch.int64),
            te.data.to(torch.uint8).unsqueeze(1).contiguous(), te.targets.to(torch.int64),
            self.classes(),
        )


class MNIST(_IdxDataset):
    """MNIST handwritten digits (60,000 + 10,000 28x28 grayscale) via torchvision.

    Files: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``,
    gunzipped in place). Classes ``0``..``9``; normalised with the reference's
    mean 0.1307 / std 0.3081; DSA strategy without flip.
    """

    name = "mnist"
    tv_class = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)
    dsa_strategy = NO_FLIP

    def classes(self) -> list[str]:
        return [str(i) for i in range(10)]


class FashionMNIST(_IdxDataset):
    """Fashion-MNIST clothing images (60,000 + 10,000 28x28 grayscale) via torchvision.

    Files: ``<root>/FashionMNIST/raw/`` in the MNIST idx format (``.gz`` gunzipped in place).
    Normalised with the reference's mean 0.2861 / std 0.3530.
    """

    name = "fashionmnist"
    tv_class = "FashionMNIST"
    mean = (0.2861,)
    std = (0.3530,)


# --------------------------------------------------------------------------- CIFAR and SVHN


class _ExistenceCheckCIFAR:
    """torchvision's CIFAR reader with the md5 checks replaced by existence checks.

    torchvision compares every pickle with the md5 of the official release, so a file in
    the same format that is not byte-identical (re-pickled, converted, written by a test)
    is rejected as "corrupted". These readers are only used on files already present
    (never with ``download=True``); downloads go through torchvision's own classes, which
    keep verifying the md5 of what they fetch.
    """

    root: str
    base_folder: str
    train_list: list
    test_list: list
    meta: dict

    def _check_integrity(self) -> bool:
        return all(
            os.path.isfile(os.path.join(self.root, self.base_folder, fname))
            for fname, _md5 in self.train_list + self.test_list
        )

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = list(data[self.meta["key"]])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _ExistenceCheckSVHN:
    """torchvision's SVHN reader with its md5 check replaced by an existence check (see
    :class:`_ExistenceCheckCIFAR` for why); downloads use torchvision's class unchanged."""

    root: str
    filename: str

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


@functools.cache
def lenient_readers() -> dict[str, type]:
    """The existence-checking subclasses of torchvision's CIFAR10, CIFAR100 and SVHN."""
    tvd = _tv_datasets()
    return {
        "CIFAR10": type("CIFAR10", (_ExistenceCheckCIFAR, tvd.CIFAR10), {}),
        "CIFAR100": type("CIFAR100", (_ExistenceCheckCIFAR, tvd.CIFAR100), {}),
        "SVHN": type("SVHN", (_ExistenceCheckSVHN, tvd.SVHN), {}),
    }


class _CIFARDataset(_FileDataset):
    tv_class: ClassVar[str] = ""

    def _tv(self):
        return getattr(_tv_datasets(), self.tv_class)

    def folder(self, root: Path) -> Path:
        return root / self._tv().base_folder

    def expected(self) -> list[str]:
        tv = self._tv()
        return [f for f, _ in tv.train_list + tv.test_list] + [tv.meta["filename"]]

    def urls(self) -> list[str]:
        return [self._tv().url]

    def download(self, root: Path) -> None:
        self._tv()(str(root), train=True, download=True)

    def download_creates(self, root: Path) -> list[Path]:
        return super().download_creates(root) + [root / self._tv().filename]

    def decode(self, root: Path) -> RawSplits:
        reader = lenient_readers()[self.tv_class]
        tr = reader(str(root), train=True, download=False)
        te = reader(str(root), train=False, download=False)

        def images(ds) -> torch.Tensor:  # torchvision keeps N,H,W,C
            return torch.from_numpy(ds.data).to(torch.uint8).permute(0, 3, 1, 2).contiguous()

        def labels(ds) -> torch.Tensor:
            return torch.as_tensor(ds.targets, dtype=torch.int64)

        return RawSplits(images(tr), labels(tr), images(te), labels(te), list(tr.classes))


class CIFAR10(_CIFARDataset):
    """CIFAR-10 (50,000 + 10,000 32x32 colour images, 10 classes), official python pickles.

    Files: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``. Files
    present are used as they are (existence check, not torchvision's md5 of the official
    release); ``--download`` fetches the md5-checked archive. Reference normalisation.
    """

    name = "cifar10"
    tv_class = "CIFAR10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)

    def expected_text(self) -> str:
        return "data_batch_1..data_batch_5, test_batch, batches.meta"


class CIFAR100(_CIFARDataset):
    """CIFAR-100 (50,000 + 10,000 32x32 colour images, 100 fine classes), official pickles.

    Files: ``<root>/cifar-100-python/{train,test,meta}``; labels are the fine labels.
    Existence-checked like ``cifar10``; reference normalisation.
    """

    name = "cifar100"
    tv_class = "CIFAR100"
    mean = (0.5071, 0.4866, 0.4409)
    std = (0.2673, 0.2564, 0.2762)


class SVHN(_FileDataset):
    """SVHN house-number digits (73,257 + 26,032 32x32 colour), official .mat files.

    Files: ``<root>/svhn/{train,test}_32x32.mat`` (label 10 is digit 0). Existence-checked
    like ``cifar10``; reference normalisation; DSA strategy without flip.
    """

    name = "svhn"
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    dsa_strategy = NO_FLIP
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def folder(self, root: Path) -> Path:
        return root / "svhn"

    def expected(self) -> list[str]:
        tv = _tv_datasets().SVHN
        return [tv.split_list[s][1] for s in self.splits]

    def urls(self) -> list[str]:
        tv = _tv_datasets().SVHN
        return [tv.split_list[s][0] for s in self.splits]

    def download(self, root: Path) -> None:
        tv = _tv_datasets().SVHN
        folder = self.folder(root)
        for s in self.splits:
            if not (folder / tv.split_list[s][1]).is_file():
                tv(str(folder), split=s, download=True)

    def decode(self, root: Path) -> RawSplits:
        import numpy as np

        reader = lenient_readers()["SVHN"]
        out = []
        for s in self.splits:
            ds = reader(str(self.folder(root)), split=s, download=False)
            x = torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8))  # N,C,H,W
            out += [x, torch.as_tensor(ds.labels, dtype=torch.int64)]
        return RawSplits(*out, [str(i) for i in range(10)])


# --------------------------------------------------------------------------- image folders


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan_tree(top: str, out: list[tuple[str, int, int]]) -> None:
    """Append (path, size, mtime_ns) of the images under ``top``, sorted, recursively.

    Plain strings and ``os.scandir`` (not pathlib): 60,000 files take a fraction of a second.
    """
    dirs = []
    with os.scandir(top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir():
            dirs.append(e.path)
        elif _is_image(e.name) and e.is_file():
            st = e.stat()
            out.append((e.path, st.st_size, st.st_mtime_ns))
    for d in dirs:
        _scan_tree(d, out)


def _scan_split(split_dir: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Class folder name -> (path, size, mtime_ns) of its images, sorted by path."""
    classes: dict[str, list[tuple[str, int, int]]] = {}
    with os.scandir(split_dir) as it:
        subdirs = sorted((e for e in it if not e.name.startswith(".") and e.is_dir()),
                         key=lambda e: e.name)
    for entry in subdirs:
        files: list[tuple[str, int, int]] = []
        _scan_tree(entry.path, files)
        classes[entry.name] = files
    return classes


def _tv_decoders():
    """torchvision's ``(decode_jpeg, decode_image, ImageReadMode)``, or None without them.

    torchvision 0.29 deprecated these in favour of TorchCodec; should a release drop them,
    every image goes through PIL (about 3x slower on JPEGs).
    """
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:
        return None
    return decode_jpeg, decode_image, ImageReadMode


def _decode_one(data: bytearray, grayscale: bool) -> torch.Tensor:
    """Any format torchvision or PIL reads, as uint8 C,H,W."""
    tv = _tv_decoders()
    if tv is not None:
        _jpeg, decode_image, mode = tv
        try:
            img = decode_image(
                torch.frombuffer(data, dtype=torch.uint8), mode=mode.GRAY if grayscale else mode.RGB
            )
            if img.dim() == 4:  # animated: first frame
                img = img[0]
            if img.dtype == torch.uint8:
                return img
        except (RuntimeError, ValueError):
            pass
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as im:
        arr = np.array(im.convert("L" if grayscale else "RGB"))
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def _fit(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased), then centre-crop to size x size."""
    if tuple(img.shape[-2:]) == (size, size):
        return img
    from torchvision.transforms.v2 import functional as F

    img = F.resize(img, [size], antialias=True)
    return F.center_crop(img, [size, size])


def decode_images(
    files: Sequence[str | Path], size: int, grayscale: bool, name: str = "imagefolder"
) -> torch.Tensor:
    """Decode ``files`` into a uint8 ``(N, C, size, size)`` tensor (C = 1 or 3).

    Files are read in chunks of ``DECODE_CHUNK``; the JPEGs of a chunk are decoded in one
    call of torchvision's ``decode_jpeg`` (libjpeg-turbo), other formats one by one with
    ``decode_image``, then PIL. A file that cannot be decoded is an error naming it.
    """
    with warnings.catch_warnings():
        # torchvision >= 0.29 warns on every call that TorchCodec supersedes these
        warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
        return _decode_images(files, size, grayscale, name)


def _decode_images(files, size, grayscale, name) -> torch.Tensor:
    tv = _tv_decoders()
    out = torch.empty((len(files), 1 if grayscale else 3, size, size), dtype=torch.uint8)

    def one(path: str | Path, data: bytearray) -> torch.Tensor:
        try:
            if not data:
                raise ValueError("empty file")
            return _decode_one(data, grayscale)
        except Exception as exc:
            raise _fail(name, f"cannot decode image {path}: {_one_line(exc)}") from None

    for start in range(0, len(files), DECODE_CHUNK):
        chunk = files[start : start + DECODE_CHUNK]
        datas = []
        for p in chunk:
            with open(p, "rb") as f:
                datas.append(bytearray(f.read()))
        decoded: dict[int, torch.Tensor] = {}
        jpeg = [i for i, d in enumerate(datas) if d[:3] == b"\xff\xd8\xff"]
        if jpeg and tv is not None:
            decode_jpeg, _image, mode = tv
            try:
                imgs = decode_jpeg(
                    [torch.frombuffer(datas[i], dtype=torch.uint8) for i in jpeg],
                    mode=mode.GRAY if grayscale else mode.RGB,
                )
                decoded = dict(zip(jpeg, imgs, strict=True))
            except (RuntimeError, ValueError):
                decoded = {}  # a bad file in the batch: decode one by one to name it
        for i, (p, d) in enumerate(zip(chunk, datas, strict=True)):
            img = decoded.get(i)
            if img is None:
                img = one(p, d)
            out[start + i] = _fit(img, size)
    return out


class ImageFolder(DatasetSpec):
    """Your own images: imagefolder:PATH reads PATH/train/<class>/* and PATH/test/<class>/*.

    Classes are the sorted names of the train subfolders; the test split must have the
    same class folders. Images (jpg, jpeg, png, bmp, gif, webp, tif, tiff, ppm, pgm, pbm;
    searched recursively inside each class folder, hidden names skipped) are decoded as RGB
    (or grayscale with ``grayscale=true``), their shorter side resized to ``size``
    (antialiased) and centre-cropped to ``size`` x ``size``. Normalisation uses the
    per-channel mean/std of the decoded train split; DSA strategy with flip.
    """

    name = "imagefolder"
    takes_argument = True

    @dataclass
    class Params:
        size: int = field(default=32, metadata={"help": "side of the square images, in pixels"})
        grayscale: bool = field(default=False, metadata={"help": "decode as one channel"})

    def load(self, arg: str | None, root: Path, download: bool) -> DataBundle:
        if not arg:
            raise DDBenchError("dataset 'imagefolder' needs a path: imagefolder:PATH")
        spec = f"{self.name}:{arg}"
        p = self.params if self.params is not None else self.Params()
        if p.size < 1:
            raise _fail(spec, f"size must be a positive number of pixels, got {p.size}")
        path = Path(arg).expanduser().resolve()
        layout = f"expected {path}/train/<class>/*.jpg and {path}/test/<class>/*.jpg"
        if not path.is_dir():
            raise _fail(spec, f"folder {path} does not exist ({layout})")
        splits = {}
        for split in ("train", "test"):
            d = path / split
            if not d.is_dir():
                raise _fail(spec, f"no folder {d} ({layout})")
            splits[split] = _scan_split(d)
        train, test = splits["train"], splits["test"]
        if not train:
            raise _fail(spec, f"no class folders in {path / 'train'} ({layout})")
        if set(train) != set(test):
            only_train = sorted(set(train) - set(test))
            only_test = sorted(set(test) - set(train))
            parts = []
            if only_train:
                parts.append(f"missing in test: {', '.join(only_train)}")
            if only_test:
                parts.append(f"not in train: {', '.join(only_test)}")
            raise _fail(spec, f"test classes differ from train classes in {path} ({'; '.join(parts)})")
        for c, files in train.items():
            if not files:
                exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
                raise _fail(spec, f"class folder {path / 'train' / c} has no images ({exts})")
        classes = sorted(train)
        train_files = [f[0] for c in classes for f in train[c]]
        test_files = [f[0] for c in classes for f in test[c]]
        sources = cache.fingerprint_stats(f for split in (train, test) for c in classes for f in split[c])

        def labels(split: dict[str, list]) -> torch.Tensor:
            return torch.tensor([i for i, c in enumerate(classes) for _ in split[c]], dtype=torch.int64)

        def decode() -> RawSplits:
            return RawSplits(
                decode_images(train_files, p.size, p.grayscale, spec), labels(train),
                decode_images(test_files, p.size, p.grayscale, spec), labels(test),
                classes,
            )

        raw = cache.cached(
            Path(root).expanduser(), f"{self.name}:{path}", _params_dict(p),
            sources, decode,
        )
        mean, std = channel_stats(raw.x_train, 255.0)
        return to_bundle(spec, raw, mean, std, WITH_FLIP)


@hookimpl
def register_datasets(register):
    for cls in (Digits, MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, ImageFolder):
        register(cls)
