"""Executors run the jobs of a sweep; the driver alone writes results.

``local`` runs them in this process or in ``--jobs N`` worker processes, ``ray`` on a Ray
cluster, ``slurm`` as a Slurm job array through submitit. The worker side of all the
out-of-process ones is ``ddbench.runtime.worker``.
"""

from __future__ import annotations

import importlib
import os
import sys

from ddbench.errors import DDBenchError


def require(module: str, executor: str):
    """Import an optional engine, or fail with the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DDBenchError(
            f"executor {executor!r} needs the {module!r} package, which is not installed; "
            f"install it with: pip install 'ddbench[{executor}]'"
        ) from None


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def import_paths() -> list[str]:
    """The driver's import path, for workers on this machine (plugins outside site-packages)."""
    return [p for p in sys.path if p and os.path.isdir(p)]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
