"""Experiment trackers: MLflow and Weights & Biases, enabled with ``ddbench run --track``.

A tracker is an ordinary plugin implementing the run hooks (``run_started``,
``cell_finished``, ``synset_stored``, ``run_finished``). The built-in ones need settings and
an optional library, so ``--track`` instantiates them for one run and registers them on that
run's plugin manager; a third-party tracker installed through the ``ddbench`` entry points
needs no flag. Every result is in the SQLite store before a hook runs, so a tracker that
fails only stops tracking: its first error is one warning line, never a lost result.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from collections import defaultdict
from pathlib import Path

from ddbench import hookimpl
from ddbench.data.conditions import dataset_label
from ddbench.errors import DDBenchError, choices_error
from ddbench.storage.records import ResultRow, SynsetRow

TRACKERS = ("mlflow", "wandb")


class Tracker:
    """The run hooks, each guarded: the first exception of a tracker is reported and turns
    it off for the rest of the run (its run is then closed as failed, if it can be).

    A subclass defines ``start(run, config)``, ``log_cell(record)``, ``log_synset(record,
    grid, trace)``, ``finish(run, ran, skipped, failed)`` and ``abandon()``."""

    name = ""

    def __init__(self):
        self.enabled = True

    @hookimpl
    def run_started(self, run, config):
        self._guard(self.start, run, config)

    @hookimpl
    def cell_finished(self, record):
        self._guard(self.log_cell, record)

    @hookimpl
    def synset_stored(self, record, artifact, grid, trace):
        self._guard(self.log_synset, record, grid, trace)

    @hookimpl
    def run_finished(self, run, ran, skipped, failed):
        self._guard(self.finish, run, ran, skipped, failed)

    def _guard(self, method, *args) -> None:
        if not self.enabled:
            return
        try:
            method(*args)
        except Exception as exc:  # a tracker never stops the run: results are already stored
            self.enabled = False
            first = (str(exc).strip().splitlines() or [""])[0]
            error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            print(f"ddbench: warning: tracker {self.name}: {error} "
                  "(tracking stopped for this run; results are stored)", file=sys.stderr)
            with contextlib.suppress(Exception):
                self.abandon()


def name(*parts) -> str:
    """A metric or artifact name from readable parts joined by ``/``: characters the trackers
    refuse in names (``+``, ``[``, ``=``, ``:``, spaces, slashes) become ``_``."""
    return "/".join(re.sub(r"[^\w.\-]+", "_", str(p)).strip("_") or "_" for p in parts)


def synset_parts(record: ResultRow | SynsetRow) -> list[str]:
    ipc = "all" if record.ipc is None else record.ipc
    return [record.method, dataset_label(record.dataset, record.conditions or "clean"), f"ipc{ipc}",
            f"seed{record.seed}"]


def cell_name(record: ResultRow) -> str:
    """``method/dataset/ipcN/seedS/model``: one metric per cell, its step the eval index."""
    return name(*synset_parts(record), record.model)


def cell_metrics(record: ResultRow) -> dict[str, float]:
    """Accuracy and cost of one evaluation, under ``acc/``, ``seconds/``, ``peak_mb/``."""
    values = {"acc": record.accuracy, "seconds": record.seconds, "peak_mb": record.peak_mem_mb}
    key = cell_name(record)
    return {f"{k}/{key}": v for k, v in values.items() if v is not None}


def trace_metrics(record: SynsetRow, trace: dict) -> dict[int, dict[str, float]]:
    """step -> {``trace/method/dataset/ipcN/seedS/series``: value} of one distillation."""
    steps: dict[int, dict[str, float]] = defaultdict(dict)
    for series, points in trace.items():
        key = name("trace", *synset_parts(record), *series.split("/"))
        for step, value in points:
            steps[step][key] = value
    return dict(sorted(steps.items()))


def table(rows: list[ResultRow]) -> tuple[list[str], list[list]]:
    """Columns and rows of the results table logged when the run ends."""
    return list(ResultRow.columns()), [r.values() for r in rows]


def enable(registry, names: str, store: str | Path, uri: str | None = None) -> list[Tracker]:
    """Register the trackers named by ``--track`` (comma list) on ``registry.pm`` for this
    run, each built by its module's ``make(folder, uri)``; a bad name or a missing library is
    an error before anything is written. Their files go beside ``store``; ``uri`` is MLflow's
    tracking URI (``--track-uri``)."""
    wanted = list(dict.fromkeys(n.strip() for n in (names or "").split(",") if n.strip()))
    for n in wanted:
        if n not in TRACKERS:
            raise choices_error("tracker", n, TRACKERS)
    if uri and "mlflow" not in wanted:
        raise DDBenchError("--track-uri is MLflow's tracking URI: use it with --track mlflow")
    modules = {n: _load(n) for n in wanted}
    folder = Path(store).parent.resolve()
    trackers = [modules[n].make(folder, uri) for n in wanted]
    for tracker in trackers:
        registry.pm.register(tracker, name=f"tracker-{tracker.name}")
    return trackers


def _load(tracker: str):
    try:
        return importlib.import_module(f"ddbench.builtins.trackers.{tracker}")
    except ImportError as exc:
        raise DDBenchError(f"tracker {tracker!r} needs the {tracker} package ({exc}): "
                           f"pip install 'ddbench[{tracker}]'") from None
