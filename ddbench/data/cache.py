"""Cache of decoded datasets: uint8 images, int64 labels and class names in one safetensors file.

A loader decodes its source files (idx, pickles, .mat, JPEG folders) once; later loads read
``<root>/.ddbench-cache/<key>.safetensors`` instead. The key is the dataset name, a hash of
its parameters and a fingerprint of the source files (path, size, mtime), so editing,
replacing or adding a source file invalidates the entry. Images stay uint8 in the cache;
conversion to normalised floats happens after it. Files are written atomically (temporary
file + ``os.replace``), so concurrent loaders never see a half-written entry. A cache that
cannot be read is decoded again and rewritten; one that cannot be written is skipped with a
warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddbench.keys import digest
from ddbench.storage.atomic import temp_name, umask

CACHE_DIRNAME = ".ddbench-cache"
#: bump when the layout of cached files changes: old entries are then ignored
FORMAT_VERSION = 1

_TENSORS = ("x_train", "y_train", "x_test", "y_test")



@dataclass
class RawSplits:
    """Decoded train/test splits before normalisation: uint8 NCHW images, int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]

    def check(self) -> None:
        for n in _TENSORS:
            t = getattr(self, n)
            want = torch.uint8 if n.startswith("x") else torch.int64
            if t.dtype != want:
                raise TypeError(f"{n} has dtype {t.dtype}, expected {want}")
        if self.x_train.dim() != 4 or self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(
                f"image shapes {tuple(self.x_train.shape)} / {tuple(self.x_test.shape)} are not N,C,H,W alike"
            )
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("images and labels differ in length")


def cache_dir(root: Path) -> Path:
    return Path(root) / CACHE_DIRNAME


def fingerprint(files: Iterable[Path | str]) -> str:
    """Hash of the sorted (absolute path, size, mtime_ns) of ``files``."""
    entries = []
    for f in files:
        p = os.path.abspath(os.fspath(f))
        st = os.stat(p)
        entries.append((p, st.st_size, st.st_mtime_ns))
    return fingerprint_stats(entries)


def fingerprint_stats(entries: Iterable[tuple[str, int, int]]) -> str:
    """Hash of (absolute path, size, mtime_ns) triples already collected (e.g. while scanning)."""
    h = hashlib.sha256()
    for p, size, mtime in sorted(entries):
        h.update(f"{p}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def cache_key(name: str, params: dict[str, Any] | None, source_fingerprint: str) -> str:
    """``<readable name>-<hash of name+params>-<hash of sources>``.

    Entries of one dataset+params differ only in the last part, which lets a new entry
    replace the stale ones it supersedes.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:40] or "dataset"
    ident = digest({"format": FORMAT_VERSION, "name": name, "params": params or {}}, 16)
    return f"{safe}-{ident}-{source_fingerprint[:16]}"


def cache_path(root: Path, key: str) -> Path:
    return cache_dir(root) / f"{key}.safetensors"


def load(path: Path) -> RawSplits | None:
    """The cached splits at ``path``, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != str(FORMAT_VERSION):
            return None
        tensors = load_file(str(path))
        raw = RawSplits(*(tensors[n] for n in _TENSORS), classes=json.loads(meta["classes"]))
        raw.check()
        return raw
    except Exception as exc:  # corrupt or foreign file: decode again and overwrite it
        warnings.warn(f"ignoring unreadable dataset cache {path}: {exc}", stacklevel=2)
        return None


def save(path: Path, raw: RawSplits, info: dict[str, Any] | None = None) -> bool:
    """Write ``raw`` to ``path`` atomically; False (with a warning) if that is impossible."""
    from safetensors.torch import save_file

    raw.check()
    metadata = {"format": str(FORMAT_VERSION), "classes": json.dumps(raw.classes)}
    if info:
        metadata["info"] = json.dumps(info, sort_keys=True, default=str)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(temp_name(path))
        save_file({n: getattr(raw, n).contiguous() for n in _TENSORS}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~umask())  # safetensors creates it 0600
        os.replace(tmp, path)
        tmp = None
    except Exception as exc:  # OSError or safetensors' own error: run without the cache
        warnings.warn(f"could not write dataset cache {path}: {exc}", stacklevel=2)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return True


def _remove_superseded(path: Path) -> None:
    """Delete entries with the same name+params prefix but other sources than ``path``."""
    prefix = path.stem.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(f"{glob_escape(prefix)}*.safetensors"):
        if old != path and old.stem.rsplit("-", 1)[0] + "-" == prefix:
            try:
                old.unlink()
            except OSError:
                pass


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def cached(
    root: Path,
    name: str,
    params: dict[str, Any] | None,
    source_fingerprint: str,
    decode: Callable[[], RawSplits],
) -> RawSplits:
    """The decoded splits of dataset ``name``: from the cache, or ``decode()`` and store them.

    ``source_fingerprint`` is :func:`fingerprint` of the files ``decode`` reads, so the
    entry changes when any of them does.
    """
    key = cache_key(name, params, source_fingerprint)
    path = cache_path(root, key)
    raw = load(path)
    if raw is not None:
        return raw
    raw = decode()
    if save(path, raw, {"name": name, "params": params or {}}):
        _remove_superseded(path)
    return raw
