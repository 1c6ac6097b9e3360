"""The progress display: rich rows on a terminal, sparse lines with rate and time left in logs."""

from __future__ import annotations

import io
import re

from ddbench.runtime.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_display_shows_cells_jobs_stage_rate_and_failures():
    out = _Terminal()
    prog = Progress(4, stream=out, total_jobs=2)
    prog.start("dm digits ipc=1 seed=0")
    for step in range(1, 6):
        prog.update("distill", step, 10)
    prog.cell_done(True)
    prog.cell_done(False)
    prog.job_done()
    prog._live.progress.refresh()
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "cells (1 failed)" in screen and "2/4" in screen
    assert "jobs" in screen and "1/2" in screen
    assert "dm digits ipc=1 seed=0 · distill" in screen and "5/10" in screen
    assert re.search(r"\d+(\.\d+)? (it/s|s/it)", screen)
    prog.close()
    assert "ran 2 evaluation(s), 1 failed in " in out.getvalue().splitlines()[-1]


def test_log_lines_at_job_start_and_a_heartbeat_with_rate_and_eta():
    out = io.StringIO()
    prog = Progress(3, stream=out, total_jobs=1, heartbeat=0)
    prog.start("dsa mnist ipc=1 seed=0")
    prog.update("distill", 0, 1000)  # the stage starts: no rate yet, no line
    prog.update("distill", 100, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[0/3 cells") and lines[0].endswith("dsa mnist ipc=1 seed=0")
    assert re.fullmatch(r"\[0/3 cells .*\] dsa mnist ipc=1 seed=0 · distill 100/1000 \(.* (it/s|s/it), ~\d+:\d\d left\)",
                        lines[1]), lines[1]
    quiet = io.StringIO()
    prog = Progress(3, stream=quiet, enabled=False, heartbeat=0)
    prog.start("x")
    prog.update("distill", 5, 10)
    prog.close()
    assert quiet.getvalue() == ""


def test_heartbeat_waits_between_lines():
    out = io.StringIO()
    prog = Progress(1, stream=out, heartbeat=3600)
    prog.start("job")
    for step in range(1, 50):
        prog.update("distill", step, 50)
    assert len(out.getvalue().splitlines()) == 1  # only the job's start


def test_time_left_counts_jobs_not_the_cells_after_a_long_distillation(monkeypatch):
    """One job of 20 cells: after an hour of distillation and 5 quick cells, the run's time left
    is not 3 hours (cells extrapolated); with a second job still to run it is an hour."""
    clock = iter([0.0, 3600.0, 3600.0])
    monkeypatch.setattr("ddbench.runtime.progress.time.perf_counter", lambda: next(clock))
    one = Progress(20, stream=io.StringIO(), total_jobs=1, heartbeat=0)
    for _ in range(5):
        one.cell_done(True)
    assert "left" not in one._head()
    clock = iter([0.0, 3600.0])
    two = Progress(40, stream=io.StringIO(), total_jobs=2, heartbeat=0)
    for _ in range(20):
        two.cell_done(True)
    two.job_done()
    assert "~1:00:00 left" in two._head()
