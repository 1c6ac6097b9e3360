"""Which process a run belongs to, and whether that process has ended.

A driver killed with -9 (or by the OOM killer, or a lost machine) never marks its run
finished or interrupted; the store marks such a run ``abandoned`` the next time it is
opened for writing. That must never happen to a run whose process still runs, so a
process is judged gone only when that can be known for sure:

- the run recorded its driver (runs stored before this column existed did not);
- the driver ran on this host, in this kernel boot and this PID namespace (``scope``:
  a digest of the boot id and the namespace; another machine or container that happens
  to share the host name, or a pid counted in another namespace, cannot be checked);
- the pid is gone, a zombie, or now belongs to a process that started at another clock
  tick than the driver did (the pid was reused).

Only Linux says all of this (``/proc``); elsewhere no run is ever marked.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

PROC = Path("/proc")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _stat(pid: int | str) -> tuple[str, int] | None:
    """(state, start tick since boot) of a process from ``/proc/PID/stat``; None if absent."""
    text = _read(PROC / str(pid) / "stat")
    if not text or ")" not in text:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    try:
        return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime) of proc(5)
    except (IndexError, ValueError):
        return None


def _scope() -> str | None:
    """What a pid is counted within: this kernel boot and this PID namespace (a digest, so
    that an exported run names no machine's boot id)."""
    boot = _read(PROC / "sys/kernel/random/boot_id")
    try:
        namespace = os.readlink(PROC / "self/ns/pid")
    except OSError:
        return None
    if not boot:
        return None
    return hashlib.sha256(f"{boot.strip()}/{namespace}".encode()).hexdigest()[:16]


def this_process() -> str:
    """The ``driver`` of a run this process starts (JSON: host, pid, and where Linux can
    tell this process from a later one with the same pid, its ``scope`` and ``start`` tick)."""
    out: dict = {"host": socket.gethostname(), "pid": os.getpid()}
    scope, stat = _scope(), _stat("self")
    if scope and stat:
        out.update(scope=scope, start=stat[1])
    return json.dumps(out, sort_keys=True)


def describe(driver: str | None) -> str:
    """``host:pid`` of a recorded driver, for messages."""
    info = _parse(driver)
    return f"{info['host']}:{info['pid']}" if info else "an unknown process"


def _parse(driver: str | None) -> dict | None:
    try:
        info = json.loads(driver or "")
    except ValueError:
        return None
    ok = (isinstance(info, dict) and isinstance(info.get("host"), str) and isinstance(info.get("pid"), int)
          and not isinstance(info.get("pid"), bool) and info["pid"] > 0)
    return info if ok else None


def gone(driver: str | None) -> bool:
    """True only when ``driver`` (``this_process()`` of some run) surely names a process that
    has ended; False when it runs or when that cannot be checked from here."""
    info = _parse(driver)
    if info is None or info["host"] != socket.gethostname():
        return False
    scope, start = info.get("scope"), info.get("start")
    if not isinstance(start, int) or scope is None or scope != _scope():
        return False
    pid = info["pid"]
    try:
        os.kill(pid, 0)  # signal 0 only asks (on Linux: only reached where /proc exists)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    stat = _stat(pid)
    if stat is None:  # exists, but /proc hides it (hidepid): cannot tell it from the driver
        return False
    state, started = stat
    return state in ("Z", "X") or started != start
