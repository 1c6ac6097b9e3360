"""``.pt``/``.pth`` files read without running anything they hold, and the reference code's layout.

A ``.pt`` file is a pickle, and unpickling can call any function the file names; a released
file is untrusted. ``torch_load`` reads with ``torch.load(weights_only=True)`` (torch's
restricted unpickler: tensors, dicts, lists, tuples, strings, numbers). When, and only when, a
file names a numpy global, it is read again with exactly these admitted for that one read:
``multiarray.scalar`` and ``multiarray._reconstruct`` (under numpy 2's ``numpy._core`` and
numpy 1's ``numpy.core`` names: the reference code's files predate numpy 2), ``numpy.ndarray``,
``numpy.dtype`` and the dtype classes of booleans and numbers. That is numpy arrays and scalars
of numbers and nothing that can run code: object arrays, other numpy types and every other
global stay refused. Any refusal is ddbench's own one line naming what the file asked for;
torch's advice to pass ``weights_only=False`` is never shown, since following it runs the file.

torch keeps its admitted globals process-wide, so the numpy read holds a lock, and a torch
older than 2.6 (no name-qualified entries) reads no numpy values at all.

``REFERENCE``: the DC/DSA/DM reference code (VICO-UoE/DatasetCondensation ``main.py``,
``main_DM.py``) saves ``res_<method>_<dataset>_<model>_<ipc>ipc.pt`` =
``{"data": [[images, labels], ...], "accs_all_exps": {model: [numpy floats]}}``, one pair per
experiment, its images in the dataset's normalised space (the code never leaves it: no ZCA).
``read_pt`` takes the first experiment's pair: the ``file:`` method has no parameter that picks
another (save ``res["data"][k]`` as its own file to evaluate experiment ``k``).
"""

from __future__ import annotations

import pickle
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from ddbench.errors import DDBenchError

REFERENCE = "the reference DC/DSA/DM result layout"
#: what a .pt file may hold, as refusals say
READABLE = "tensors, numpy arrays and numbers, and dicts, lists and tuples of them"
_LOCK = threading.Lock()
#: how torch names what it refused: "GLOBAL posix.system", "function <built-in ...>", "but got <class ...>"
_REFUSED = re.compile(r"GLOBAL ([\w.]+)|unrecognized function (.+?)(?: which|$)|but got (<[^>]+>)", re.MULTILINE)


def _numpy_globals() -> list[tuple[object, str]]:
    """(object, the name a pickle gives it): numpy arrays and scalars of numbers, nothing else."""
    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    numeric = {type(np.dtype(c)) for c in np.typecodes["All"] if np.dtype(c).kind in "biufc"}
    return ([(f, f"{m}.multiarray.{f.__name__}") for f in (scalar, reconstruct) for m in ("numpy.core", "numpy._core")]
            + [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
            + [(t, f"{t.__module__}.{t.__qualname__}") for t in sorted(numeric, key=lambda t: t.__name__)])


def _numpy_admissible() -> bool:
    return torch.torch_version.TorchVersion(torch.__version__) >= "2.6"


def torch_load(path: Path):
    """``torch.load`` restricted to plain data (and numpy numbers): a pickled object is refused,
    never built; a damaged file is "cannot be read"; both one line."""
    try:
        return _load(path)
    except pickle.UnpicklingError as exc:
        refused = _refused_name(exc)
        if not (refused or "").startswith("numpy.") or not _numpy_admissible():
            raise _refusal(path, exc, refused) from None
    with _LOCK, torch.serialization.safe_globals(_numpy_globals()):
        try:
            return _load(path)
        except pickle.UnpicklingError as exc:
            raise _refusal(path, exc, _refused_name(exc)) from None


def _load(path: Path):
    try:
        with warnings.catch_warnings():  # torch's notes on its loader (protocols, sparse checks): not the user's
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # any failure to parse an untrusted file is "cannot be read"
        raise unreadable(path, exc) from None


def _inner(exc: Exception) -> str:
    """torch's own reason, without its advice to load with ``weights_only=False``."""
    text = str(exc)
    _, found, reason = text.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in (reason if found else text).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _refused_name(exc: Exception) -> str | None:
    m = _REFUSED.search(str(exc))
    name = None if m is None else next(g for g in m.groups() if g).strip()
    return None if name is None else re.sub(r"^<class '(.+)'>$", r"\1", name)


def _refusal(path: Path, exc: Exception, name: str | None) -> DDBenchError:
    if name is None:
        try:
            with open(path, "rb") as f:
                plain = f.read(1) == b"\x80"  # a pickle's PROTO opcode, where torch.save writes a zip
        except OSError:
            plain = False
        if not plain:
            return unreadable(path, exc)
        return DDBenchError(f"{path}: refused: a plain pickle (pickle.dump, not torch.save), which is not read; "
                            "re-save it with torch.save of plain tensors, or as .safetensors")
    return DDBenchError(f"{path}: refused: the file needs unpickling of arbitrary objects ({name}); only "
                        f"{READABLE} are read: re-save it with torch.save of plain tensors, or as .safetensors")


def unreadable(path: Path, exc: Exception) -> DDBenchError:
    return DDBenchError(f"{path}: cannot be read ({_inner(exc)})")


def read_pt(path: Path) -> tuple[dict, str | None]:
    """The named entries of a ``.pt`` file and, for the reference code's result file, a note
    saying which of its experiments they are (None otherwise)."""
    obj = torch_load(path)
    if isinstance(obj, dict) and {"data", "accs_all_exps"} <= set(obj) and isinstance(obj["data"], (list, tuple)):
        return _reference_entries(path, obj["data"])
    if isinstance(obj, dict):
        return obj, None
    if isinstance(obj, (tuple, list)) and len(obj) in (2, 3):
        return dict(zip(("images", "labels", "lr"), obj, strict=False)), None
    raise DDBenchError(f"{path}: holds a {type(obj).__name__}; expected a dict with images and labels, "
                       "a tuple (images, labels) or (images, labels, lr), or the reference code's "
                       "{'data': [[images, labels], ...], 'accs_all_exps': ...}")


def _reference_entries(path: Path, runs) -> tuple[dict, str]:
    if not runs:
        raise DDBenchError(f"{path}: {REFERENCE} with no experiments ('data' is empty)")
    first = runs[0]
    if not (isinstance(first, (list, tuple)) and len(first) == 2):
        raise DDBenchError(f"{path}: {REFERENCE}, but data[0] is a {type(first).__name__} of "
                           f"{len(first) if isinstance(first, (list, tuple)) else 1} item(s); "
                           "expected [images, labels]")
    return {"images": first[0], "labels": first[1]}, f"{REFERENCE}, experiment 1 of {len(runs)}"
