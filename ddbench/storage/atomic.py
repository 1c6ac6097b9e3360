"""Files written so that readers see the old content or the new, never a partial one, and
the content hash that names a file or folder exactly. Every module that writes a file a
reader may open concurrently (dataset caches, teachers, experts, reports) writes it here."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path

from ddbench.errors import DDBenchError

_CHUNK = 1 << 20


def umask() -> int:
    """The process umask (read from /proc where possible: setting it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_name(target: Path) -> Path:
    """A fresh hidden name next to ``target`` for writing it atomically (then ``os.replace``).

    Unlike ``tempfile.mkstemp`` the file is not created here, so it gets the usual
    permissions (umask) rather than 0600.
    """
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def write_atomic(target: Path, data: str | bytes) -> None:
    """Write a file so that readers see the old content or the new, never a partial one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files with their relative paths, so that a
    result can name exactly which release it evaluated (a renamed file changes it)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
        for rel, p in files:
            name = rel.encode()
            h.update(len(name).to_bytes(8, "little") + name + p.stat().st_size.to_bytes(8, "little"))
            _feed(h, p)
    elif path.is_file():
        _feed(h, path)
    else:
        raise DDBenchError(f"{path}: no such file or folder")
    return h.hexdigest()


def _feed(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def deepest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where a file under it would be created."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    return path


def probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``; ``OSError`` when that fails. Permission bits
    alone say nothing for root or on a read-only file system, so a writer checks this way
    before any work."""
    fd, tmp = tempfile.mkstemp(prefix=".ddbench-probe-", dir=folder)
    os.close(fd)
    os.unlink(tmp)
