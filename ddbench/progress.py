"""Progress of a sweep on stderr: one live line on a terminal, sparse lines in a log."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_cells: int, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = total_cells
        self.done = 0
        self.failed = 0
        self.label = ""
        self._last = 0.0
        self._last_line_pct = -1
        self._start = time.perf_counter()

    def start(self, label: str) -> None:
        self.label = label
        if self.enabled and not self.tty:
            self._print(f"{self._head()} {label}")
        self.update("", 0, 0, force=True)

    def update(self, phase: str, step: int, total: int, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.2 and step != total:
            return
        self._last = now
        inner = f" · {phase} {step}/{total}" if phase else ""
        line = f"{self._head()} {self.label}{inner}"
        self.stream.write("\r\033[K" + line[:200])
        self.stream.flush()

    def cell_done(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        self.update("", 0, 0, force=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        if self.enabled:
            took = time.perf_counter() - self._start
            fails = f", {self.failed} failed" if self.failed else ""
            self._print(f"ran {self.done} evaluation(s){fails} in {took:.1f} s")

    def _head(self) -> str:
        pct = 100 * self.done / self.total if self.total else 100
        elapsed = time.perf_counter() - self._start
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ~{_clock(elapsed / self.done * (self.total - self.done))} left"
        return f"[{self.done}/{self.total} cells {pct:3.0f}% {_clock(elapsed)}{eta}]"

    def _print(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
