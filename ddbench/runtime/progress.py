"""Progress of a sweep on stderr: a live display on a terminal, plain lines in a log.

On a terminal (rich): the cells done of the run with failures so far and the time left, the
jobs done, and the current stage (distillation, evaluation, experts, teacher) with its
steps, rate and time left. Elsewhere (a log file, CI, Slurm output): a line when a job
starts and, during a long stage, one every ``heartbeat`` seconds with its rate and time
left, so that a log shows where an hours-long distillation is. ``--quiet`` prints none.
"""

from __future__ import annotations

import sys
import time

#: seconds between progress lines of a long stage when the output is not a terminal
HEARTBEAT = 60.0


class Progress:
    def __init__(self, total_cells: int, stream=None, enabled: bool = True, total_jobs: int = 0,
                 heartbeat: float = HEARTBEAT):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total, self.jobs = total_cells, total_jobs
        self.done = self.failed = self.jobs_done = 0
        self.label = ""
        self.heartbeat = heartbeat
        self._start = time.perf_counter()
        self._stage: tuple[str, float, int] | None = None  # (phase, started, first step)
        self._last_line = self._start
        self._live = _Live(self.stream, total_cells, total_jobs) if self.tty else None

    def start(self, label: str) -> None:
        """A job (or a stage before it: experts, a teacher) begins."""
        self.label = label
        self._stage = None
        if self._live:
            self._live.job(label)
        elif self.enabled:
            self._print(f"{self._head()} {label}")

    def update(self, phase: str, step: int, total: int) -> None:
        """``step`` of ``total`` of the current job's ``phase`` (distill, eval ..., experts)."""
        now = time.perf_counter()
        if self._stage is None or self._stage[0] != phase or step < self._stage[2]:
            self._stage = (phase, now, step)
        if self._live:
            self._live.stage(f"{self.label} · {phase}", step, total)
            return
        if self.enabled and step and now - self._last_line >= self.heartbeat:
            self._print(f"{self._head()} {self.label} · {phase} {step}/{total}{self._rate(step, total, now)}")

    def _rate(self, step: int, total: int, now: float) -> str:
        phase, started, first = self._stage
        done, took = step - first, now - started
        if done <= 0 or took <= 0:
            return ""
        per = took / done
        rate = f"{per:.2f} s/it" if per >= 1 else f"{1 / per:.1f} it/s"
        return f" ({rate}, ~{_clock(per * (total - step))} left)"

    def cell_done(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if self._live:
            self._live.cells(self.done, self.failed)

    def job_done(self) -> None:
        self.jobs_done += 1
        if self._live:
            self._live.jobs_done(self.jobs_done)

    def close(self) -> None:
        if self._live:
            self._live.stop()
        if self.enabled:
            took = time.perf_counter() - self._start
            fails = f", {self.failed} failed" if self.failed else ""
            self._print(f"ran {self.done} evaluation(s){fails} in {took:.1f} s")

    def _head(self) -> str:
        pct = 100 * self.done / self.total if self.total else 100
        elapsed = time.perf_counter() - self._start
        eta = ""
        # time left by jobs, the unit of work: by cells, a run's first cells (after a long
        # distillation) would extrapolate the distillation over every remaining cell
        if self.jobs and 0 < self.jobs_done < self.jobs:
            eta = f", ~{_clock(elapsed / self.jobs_done * (self.jobs - self.jobs_done))} left"
        elif not self.jobs and 0 < self.done < self.total:
            eta = f", ~{_clock(elapsed / self.done * (self.total - self.done))} left"
        fails = f", {self.failed} failed" if self.failed else ""
        return f"[{self.done}/{self.total} cells {pct:3.0f}% {_clock(elapsed)}{eta}{fails}]"

    def _print(self, line: str) -> None:
        self._last_line = time.perf_counter()
        self.stream.write(line + "\n")
        self.stream.flush()


class _Live:
    """The terminal display: three rich progress rows (cells, jobs, current stage)."""

    def __init__(self, stream, total_cells: int, total_jobs: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(file=stream, force_terminal=True), transient=True, refresh_per_second=4)
        self.cells_task = self.progress.add_task("cells", total=total_cells, rate="")
        self.jobs_task = self.progress.add_task("jobs", total=max(total_jobs, 1), rate="")
        self.stage_task = self.progress.add_task("", total=1, rate="", visible=False)
        self._stage = ""
        self.progress.start()

    def job(self, label: str) -> None:
        self._stage = ""
        self.progress.update(self.stage_task, description=label, completed=0, total=1, visible=True, rate="")

    def stage(self, description: str, step: int, total: int) -> None:
        if description != self._stage:
            self._stage = description
            self.progress.reset(self.stage_task, total=max(total, 1), description=description, visible=True)
        self.progress.update(self.stage_task, completed=step, rate=_speed(self.progress.tasks[self.stage_task].speed))

    def cells(self, done: int, failed: int) -> None:
        label = "cells" + (f" ({failed} failed)" if failed else "")
        self.progress.update(self.cells_task, completed=done, description=label)

    def jobs_done(self, done: int) -> None:
        self.progress.update(self.jobs_task, completed=done)

    def stop(self) -> None:
        self.progress.stop()


def _speed(speed: float | None) -> str:
    if not speed:
        return ""
    return f"{1 / speed:.2f} s/it" if speed < 1 else f"{speed:.1f} it/s"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
