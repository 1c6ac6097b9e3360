"""What the built-in trackers share: their library imported on demand, and what they log,
named alike (metric and artifact names from a row's method, dataset, IPC, seed and model;
the values logged per cell and per distillation)."""

from __future__ import annotations

import importlib
import re
from collections import defaultdict

from ddbench.data.conditions import dataset_label
from ddbench.errors import DDBenchError
from ddbench.storage.records import ResultRow, SynsetRow


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


def require(module: str, tracker: str):
    """Import a tracker's library, or fail with the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DDBenchError(f"tracker {tracker!r} needs the {tracker} package ({exc}): "
                           f"pip install 'ddbench[{tracker}]'") from None


