"""Resumable distillation: a distillation's whole state in one file, written atomically.

Paper budgets run for hours (DM: 20,000 iterations; DC at IPC 10: 1,000 outer iterations),
longer than a laptop session or a preemptible node. ``DistillContext.checkpoint`` saves the
state every ``every`` iterations or ``minutes`` of wall time; the next run of the same
command finds the file by the job's key and ``DistillContext.resume`` continues from it.
Everything the continuation draws from is saved (images, optimiser state, generators, the
global RNG, objectives), so the result equals an uninterrupted run bit for bit.

The file is safetensors: tensors (optimiser buffers, generator states as uint8) in the
body, plain data as JSON in its metadata. Reading it never unpickles anything: a file
that is not such a checkpoint (a ``torch.save`` pickle put in its place) is refused.
Writes go to a temporary file in the same folder, are fsynced, then renamed over the
old checkpoint: a crash leaves the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddbench.errors import DDBenchError

FORMAT = "ddbench-checkpoint/1"
#: the default interval, by time because an iteration lasts from milliseconds (DM on a GPU)
#: to minutes (DC at IPC 50 on a CPU): work lost is at most this long, and a write (120 MB
#: at most, CIFAR-100 IPC 50: 0.4 s with its fsync) costs under 0.1% of it
DEFAULT_MINUTES = 10.0


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where checkpoints go and how often: execution settings, never part of a result key.

    ``every``: iterations between checkpoints (0: not by count); ``minutes``: wall minutes
    (0: not by time); both 0 writes none (an existing checkpoint is still resumed)."""

    folder: Path
    every: int = 0
    minutes: float = DEFAULT_MINUTES

    def __post_init__(self):
        if self.every < 0 or not self.minutes >= 0:
            raise DDBenchError(f"checkpoint intervals must be >= 0; got every={self.every}, minutes={self.minutes}")

    def path(self, key: str) -> Path:
        return Path(self.folder) / f"{key}.safetensors"


# --------------------------------------------------------------------------- encoding


def pack(value: Any) -> tuple[dict[str, torch.Tensor], str]:
    """``value`` as (tensors, JSON text): tensors, optimisers (their ``state_dict``),
    generators (their state), modules (their ``state_dict``), and dicts (str or int keys),
    lists, tuples and JSON scalars of them. ``unpack`` gives it back, with optimisers and
    modules as their state dicts and generators as their state tensors."""
    tensors: dict[str, torch.Tensor] = {}
    return tensors, json.dumps(_encode(value, tensors, "state"))


def unpack(tensors: dict[str, torch.Tensor], text: str) -> Any:
    return _decode(json.loads(text), tensors)


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"$t": name}
    if isinstance(value, torch.optim.Optimizer):
        return {"$opt": _encode(value.state_dict(), tensors, where)}
    if isinstance(value, torch.Generator):
        return {"$gen": _encode(value.get_state(), tensors, where)}
    if isinstance(value, torch.nn.Module):
        return {"$mod": _encode(value.state_dict(), tensors, where)}
    if isinstance(value, (list, tuple)):
        tag = "$l" if isinstance(value, list) else "$tu"
        return {tag: [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, (str, int)) or isinstance(k, bool)]
        if bad:
            raise DDBenchError(f"checkpoint: {where} has a key {bad[0]!r}; keys must be str or int")
        return {"$d": [[k, _encode(v, tensors, f"{where}[{k!r}]")] for k, v in value.items()]}
    raise DDBenchError(f"checkpoint: cannot store {type(value).__name__} at {where} (tensors, optimizers, "
                       f"generators, modules, and dicts/lists of them or of JSON values only)")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict):
        return node
    (tag, body), = node.items()
    if tag == "$t":
        return tensors[body]
    if tag in ("$opt", "$gen", "$mod"):
        return _decode(body, tensors)
    if tag == "$l":
        return [_decode(v, tensors) for v in body]
    if tag == "$tu":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "$d":
        return {k: _decode(v, tensors) for k, v in body}
    raise DDBenchError(f"checkpoint: unknown entry {tag!r}")


def restore(live: dict[str, Any], saved: dict[str, Any], who: str) -> None:
    """Load ``saved`` (from ``unpack``) into the live objects of ``live`` in place: tensors
    are copied into, optimisers, modules and generators load their state; any other entry
    (plain data) is replaced in ``live``. The two must have the same keys."""
    if not isinstance(saved, dict) or set(live) != set(saved):
        held = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise DDBenchError(f"checkpoint of {who} holds {held}, the code expects {sorted(live)}; "
                           f"delete the checkpoint to start over")
    for key, obj in live.items():
        value = saved[key]
        if isinstance(obj, torch.Tensor):
            with torch.no_grad():
                obj.copy_(value)
        elif isinstance(obj, (torch.optim.Optimizer, torch.nn.Module)):
            obj.load_state_dict(value)
        elif isinstance(obj, torch.Generator):
            obj.set_state(value)
        else:
            live[key] = value


# --------------------------------------------------------------------------- files


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: temp file in the same folder, fsync, rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power loss once the folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint; ``DDBenchError`` (one line) for anything else.
    safetensors parses a header and raw buffers only: nothing in the file is executed."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DDBenchError(f"{path} is not a ddbench checkpoint ({why}); delete it to start over") from None
    return tensors, meta


def remove(path: Path) -> None:
    """The checkpoint and any temporary file a killed writer left beside it."""
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f"{path.name}.*.tmp") if path.parent.exists() else ():
        tmp.unlink(missing_ok=True)


@dataclass
class Saved:
    step: int
    state: dict[str, Any]
    seconds: float
    cpu_seconds: float


class Checkpointer:
    """One distillation's checkpoint file: when it is due, saving, loading.

    It also keeps the distillation's clock: a checkpoint records the wall and CPU seconds
    spent up to it, and a resumed run adds them to its own (``prior``)."""

    def __init__(self, path: Path, key: str, every: int = 0, minutes: float = DEFAULT_MINUTES):
        self.path, self.key, self.every, self.minutes = Path(path), key, every, minutes
        self._start, self._cpu_start = time.perf_counter(), time.process_time()
        self._last_step, self._last_time = 0, self._start
        #: (wall, cpu) seconds of the earlier runs up to the checkpoint resumed from
        self.prior = (0.0, 0.0)
        self.resumed_from: int | None = None

    def due(self, step: int) -> bool:
        if self.every and step - self._last_step >= self.every:
            return True
        return bool(self.minutes) and time.perf_counter() - self._last_time >= 60 * self.minutes

    def elapsed(self) -> tuple[float, float]:
        """Wall and CPU seconds of this distillation so far, earlier runs included."""
        return (self.prior[0] + time.perf_counter() - self._start,
                self.prior[1] + time.process_time() - self._cpu_start)

    def save(self, step: int, state: dict[str, Any]) -> None:
        tensors, text = pack(state)
        wall, cpu = self.elapsed()
        write(self.path, tensors, {"format": FORMAT, "key": self.key, "step": str(int(step)),
                                   "seconds": json.dumps([wall, cpu]), "state": text})
        self._last_step, self._last_time = step, time.perf_counter()

    def load(self) -> Saved | None:
        """The saved state, or None when there is no checkpoint."""
        if not self.path.exists():
            return None
        tensors, meta = read(self.path)
        if meta.get("key") != self.key:
            raise DDBenchError(f"{self.path} belongs to distillation {meta.get('key')!r}, not {self.key!r}; "
                               f"delete it to start over")
        try:
            step = int(meta["step"])
            wall, cpu = json.loads(meta["seconds"])
            state = unpack(tensors, meta["state"])
        except (KeyError, ValueError, TypeError) as exc:
            raise DDBenchError(f"{self.path} is not a ddbench checkpoint ({exc}); delete it to start over") from None
        self.prior, self.resumed_from = (float(wall), float(cpu)), step
        self._last_step = step
        return Saved(step, state, float(wall), float(cpu))
