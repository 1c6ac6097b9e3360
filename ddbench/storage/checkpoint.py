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

A checkpoint knows what it belongs to: its job's key, a step within the iteration budget,
and a state that fits the one the distiller built (``check_fits``: every tensor's shape
and dtype, optimiser and generator states, plain values' types). One that does not is set
aside (``Checkpointer.set_aside``) and the distillation starts over: a damaged or foreign
file never continues into a set stored as ok.
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


# --------------------------------------------------------------------------- fitting


def check_fits(live: Any, saved: Any, where: str) -> None:
    """``DDBenchError`` (one line naming the entry) unless ``saved`` (from ``unpack``) can
    be loaded into ``live``, the state as freshly built: tensors of the same shape and dtype
    (``copy_`` would broadcast a wrong one silently), optimiser states over the same
    parameters, generator states of the generator's size, modules' state dicts, the same
    dict keys, and plain values of the same type. A live None (not known yet) takes any
    value; a list may change length (a queue), its elements then fit its first one."""
    if live is None:
        return
    if isinstance(live, torch.Tensor):
        _fits_tensor(tuple(live.shape), live.dtype, saved, where)
    elif isinstance(live, torch.Generator):
        _fits_tensor(tuple(live.get_state().shape), torch.uint8, saved, f"{where} (generator state)")
    elif isinstance(live, torch.nn.Module):
        check_fits(live.state_dict(), saved, where)
    elif isinstance(live, torch.optim.Optimizer):
        _fits_optimizer(live, saved, where)
    elif isinstance(live, dict):
        if not isinstance(saved, dict) or set(saved) != set(live):
            held = sorted(map(str, saved)) if isinstance(saved, dict) else _kind(saved)
            raise DDBenchError(f"{where} holds {held}, expected {sorted(map(str, live))}")
        for key, value in live.items():
            check_fits(value, saved[key], f"{where}[{key!r}]")
    elif isinstance(live, tuple):
        if not isinstance(saved, tuple) or len(saved) != len(live):
            raise DDBenchError(f"{where} is {_kind(saved)}, expected a tuple of {len(live)}")
        for i, (a, b) in enumerate(zip(live, saved, strict=True)):
            check_fits(a, b, f"{where}[{i}]")
    elif isinstance(live, list):
        if not isinstance(saved, list):
            raise DDBenchError(f"{where} is {_kind(saved)}, expected a list")
        for i, value in enumerate(saved):
            ref = live[i] if len(live) == len(saved) else live[0] if live else None
            check_fits(ref, value, f"{where}[{i}]")
    elif not _same_type(live, saved):
        raise DDBenchError(f"{where} is {_kind(saved)}, expected {type(live).__name__}")


def _same_type(live: Any, saved: Any) -> bool:
    if isinstance(live, bool) or isinstance(saved, bool):
        return type(live) is type(saved)
    if isinstance(live, float):  # JSON keeps 1.0 a float; an int is as good
        return isinstance(saved, (int, float))
    return type(saved) is type(live)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _fits_tensor(shape: tuple, dtype: torch.dtype, saved: Any, where: str) -> None:
    if not isinstance(saved, torch.Tensor) or tuple(saved.shape) != shape or saved.dtype != dtype:
        want = f"a {str(dtype).removeprefix('torch.')} tensor of shape {shape}"
        raise DDBenchError(f"{where} is {_kind(saved)}, expected {want}")


def _fits_optimizer(opt: torch.optim.Optimizer, saved: Any, where: str) -> None:
    """The same parameter groups (hyperparameters of the same types); per-parameter state
    (momentum, Adam's moments) of its parameter's shape and dtype, or a scalar (a step)."""
    ref = opt.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(ref):
        held = sorted(map(str, saved)) if isinstance(saved, dict) else _kind(saved)
        raise DDBenchError(f"{where} holds {held}, expected an optimizer state {sorted(ref)}")
    groups = saved["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(ref["param_groups"]):
        raise DDBenchError(f"{where}['param_groups'] is {_kind(groups)}"
                           f"{f' of {len(groups)}' if isinstance(groups, list) else ''}, "
                           f"expected a list of {len(ref['param_groups'])}")
    for i, (group, held) in enumerate(zip(ref["param_groups"], groups, strict=True)):
        check_fits(group, held, f"{where}['param_groups'][{i}]")
        if held["params"] != group["params"]:
            raise DDBenchError(f"{where}['param_groups'][{i}] holds parameters {held['params']}, "
                               f"expected {group['params']}")
    params = [q for group in opt.param_groups for q in group["params"]]
    state = saved["state"]
    if not isinstance(state, dict):
        raise DDBenchError(f"{where}['state'] is {_kind(state)}, expected a dict")
    for pid, entry in state.items():
        at = f"{where}['state'][{pid!r}]"
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < len(params):
            raise DDBenchError(f"{at}: no such parameter (the optimizer has {len(params)})")
        if pid in ref["state"]:
            check_fits(ref["state"][pid], entry, at)
            continue
        if not isinstance(entry, dict):
            raise DDBenchError(f"{at} is {_kind(entry)}, expected a dict")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                continue  # a counter (Adam's step)
            if isinstance(value, torch.Tensor):
                _fits_tensor(tuple(params[pid].shape), params[pid].dtype, value, f"{at}[{name!r}]")
            elif value is not None and not isinstance(value, (bool, int, float, str)):
                raise DDBenchError(f"{at}[{name!r}] is {_kind(value)}, expected a tensor or a number")


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
        raise DDBenchError(f"{path} is not a ddbench checkpoint ({why})") from None
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
    spent up to it, and a resumed run adds them to its own (``prior``). ``iterations`` is
    the distillation's budget, when known: a checkpoint's step must lie within it."""

    def __init__(self, path: Path, key: str, every: int = 0, minutes: float = DEFAULT_MINUTES,
                 iterations: int | None = None):
        self.path, self.key, self.every, self.minutes = Path(path), key, every, minutes
        self.iterations = iterations
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

    def load(self, iterations: int | None = None) -> Saved | None:
        """The saved state, or None when there is no checkpoint; ``DDBenchError`` (one line)
        for a file that is not this distillation's: another key, a step outside
        ``0..iterations`` (default: ``self.iterations``), a state that does not decode.
        Whether the state fits the live one is the caller's check (``check_fits``)."""
        if not self.path.exists():
            return None
        tensors, meta = read(self.path)
        if meta.get("key") != self.key:
            raise DDBenchError(f"{self.path} belongs to distillation {meta.get('key')!r}, not {self.key!r}")
        budget = self.iterations if iterations is None else iterations
        try:
            step = int(meta["step"])
            wall, cpu = (float(s) for s in json.loads(meta["seconds"]))
            state = unpack(tensors, meta["state"])
        except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DDBenchError(f"{self.path} is not a ddbench checkpoint ({why})") from None
        if step < 0 or (budget is not None and step > budget):
            span = "a step >= 0" if budget is None else f"0..{budget}, the distillation's iterations"
            raise DDBenchError(f"{self.path} is at iteration {step}, expected {span}")
        if not (0 <= wall < float("inf") and 0 <= cpu < float("inf")):
            raise DDBenchError(f"{self.path} records {wall}, {cpu} seconds spent; expected finite, >= 0")
        return Saved(step, state, wall, cpu)

    def adopt(self, saved: Saved) -> None:
        """Continue from ``saved`` (once it fits): its clock and step become this run's."""
        self.prior, self.resumed_from = (saved.seconds, saved.cpu_seconds), saved.step
        self._last_step = saved.step

    def set_aside(self) -> Path:
        """Rename the checkpoint to ``NAME.rejected-<timestamp>`` beside it (kept for a look,
        never resumed) and return the new path; ``DDBenchError`` when it cannot be moved."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.rejected-{stamp}")
        n = 1
        while target.exists() or target.is_symlink():
            n += 1
            target = self.path.with_name(f"{self.path.name}.rejected-{stamp}-{n}")
        try:
            os.replace(self.path, target)
        except OSError as exc:
            raise DDBenchError(f"cannot set aside {self.path} ({exc.strerror}); move it away to start over") from None
        return target
