"""The worker side of every out-of-process executor, and the wire format it reads.

A task travels as bytes: the item pickled with its large CPU tensors (the dataset) taken
out through ``share``, so that an executor sends each once (once per worker process,
once into Ray's object store, once into a file of the Slurm folder) instead of once per
task. ``loads`` puts them back through ``fetch``. Workers compute and return events;
they never open the store or the progress display.

Placement: a worker is told the device it owns (``cuda:i``, or None for "as the task
says"); ``device_for`` is what ``tasks.run_task`` asks. Threads: every worker sets its
torch threads explicitly (``configure``), so the numbers do not depend on how many
workers share the machine.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch

#: tensors at least this large (bytes) travel through ``share`` rather than inline
SHARE_BYTES = 1 << 20

_assigned: torch.device | None = None
#: tensors a long-lived worker process has received, by key (local pool)
_received: dict[Any, torch.Tensor] = {}


def device_for(requested: torch.device) -> torch.device:
    """The device a task asking for ``requested`` runs on in this process: the worker's
    own GPU when it was given one and the task wants CUDA, else ``requested``."""
    if requested.type == "cuda" and _assigned is not None:
        return _assigned
    return requested


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def configure(threads: int, device: str | None, paths: list[str] | None = None) -> None:
    """Set up this worker process: torch threads, its device, the driver's import path."""
    global _assigned
    from ddbench.runtime.allocator import tune_allocator

    tune_allocator()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    _assigned = torch.device(device) if device else None
    for p in paths or ():  # plugins importable in the driver (a test's fake package, a
        if p not in sys.path and os.path.isdir(p):  # source checkout) on this node too
            sys.path.append(p)


def cuda_assignment() -> str | None:
    """The device of a worker that an engine gave GPUs (CUDA_VISIBLE_DEVICES): ``cuda:0``."""
    return "cuda:0" if torch.cuda.is_available() else None


# --------------------------------------------------------------------------- wire format


class _Pickler(pickle.Pickler):
    def __init__(self, file, share: Callable[[torch.Tensor], Any]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._share = share

    def persistent_id(self, obj):
        if (type(obj) is torch.Tensor and obj.device.type == "cpu"
                and obj.numel() * obj.element_size() >= SHARE_BYTES):
            return self._share(obj)
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, fetch: Callable[[Any], torch.Tensor]):
        super().__init__(file)
        self._fetch = fetch

    def persistent_load(self, pid):
        return self._fetch(pid)


def dumps(obj: Any, share: Callable[[torch.Tensor], Any]) -> bytes:
    """Pickle ``obj``; each large tensor becomes ``share(tensor)`` (a picklable token that
    must not contain tensors: tensor bytes, an object reference, a file name)."""
    buf = io.BytesIO()
    _Pickler(buf, share).dump(obj)
    return buf.getvalue()


def loads(blob: bytes, fetch: Callable[[Any], torch.Tensor]) -> Any:
    return _Unpickler(io.BytesIO(blob), fetch).load()


def tensor_bytes(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(data), weights_only=True)


# --------------------------------------------------------------------------- running


def run_batch(fn, blob: bytes, fetch: Callable[[Any], torch.Tensor], threads: int,
              device: str | None, paths: list[str]) -> list:
    """Run one task to its end and return every event (Ray tasks, Slurm jobs)."""
    configure(threads, device, paths)
    item = loads(blob, fetch)
    return list(fn(item))


def _fetch_local(pid):
    """Tokens of the local pool: ``("put", key, bytes)`` the first time, then ``("get", key)``."""
    if pid[0] == "put":
        _received[pid[1]] = tensor_from_bytes(pid[2])
    return _received[pid[1]]


def serve(conn, threads: int, device: str | None) -> None:
    """A local pool worker: read tasks from ``conn``, stream their events back.

    Messages out: ``("event", value)`` per value, then ``("done", None)``; ``("error",
    text)`` if ``fn`` itself raised. Ctrl-C is the driver's business (it ends the pool).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure(threads, device)
    while True:
        try:
            blob = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not blob:
            return
        try:
            fn, item = loads(blob, _fetch_local)
            for value in fn(item):
                conn.send_bytes(pickle.dumps(("event", value), protocol=pickle.HIGHEST_PROTOCOL))
            msg: tuple = ("done", None)
        except Exception as exc:  # a bug, not a failed cell (run_task turns those into rows)
            msg = ("error", "".join(traceback.format_exception_only(type(exc), exc)).strip())
        conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
