"""Baseline files: reference numbers a run is checked against (``ddbench check``).

Two formats, one in-memory shape (:class:`Baseline` of :class:`BaselineCell`):

- ``*.json``: a baseline of this project's own numbers, written by ``ddbench check --update``
  from stored results. It records the exact command(s), the evaluation protocol (name,
  version, parameter hash) and the library versions that produced it, and per cell the
  unit values, so a check uses the baseline's spread and n, not just its mean.
- ``*.csv``: published tables (``results/baselines/reported.csv``): one row per
  (method, dataset, conditions, IPC, model) with mean, std and n where the paper gives them,
  the source, whether the number was verified in the source, and the label type (soft-label
  methods are not comparable with hard-label ones). ``# key: value`` lines at the top are
  metadata (``# tolerance_pp: 2``; other comments are ignored). Published files are never rewritten from a run.

Accuracies in baseline files are percentages, as papers print them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ddbench.errors import DDBenchError

FORMAT = "ddbench-baseline/1"
CSV_COLUMNS = ("method", "dataset", "conditions", "ipc", "model", "mean", "std", "n", "labels",
               "protocol", "source", "verified", "note")
CSV_META = ("tolerance_pp", "name", "description")  # '# key: value' comment lines read as metadata
REQUIRED_CSV = ("method", "dataset", "ipc", "model", "mean")
LABELS = ("hard", "soft")
#: tolerance (percentage points) when neither the baseline file nor the command gives one
DEFAULT_TOLERANCE_PP = 1.0


@dataclass(frozen=True, order=True)
class Key:
    """Where a number belongs: the method label and the report cell."""

    dataset: str
    conditions: str
    ipc: str
    model: str
    method: str

    def short(self) -> str:
        cond = "" if self.conditions == "clean" else f" [{self.conditions}]"
        return f"{self.method} {self.dataset}{cond}/ipc{self.ipc}/{self.model}"


@dataclass
class BaselineCell:
    key: Key
    mean: float  # percent
    std: float = math.nan  # percent, sample std over the units; nan when unknown
    n: int | None = None  # number of units; None when the source does not say
    unit: str = ""
    values: dict = field(default_factory=dict)  # unit id -> percent (own baselines)
    labels: str = "hard"
    #: the evaluation protocol's name behind a published number (``dc-eval``); "" = any
    protocol: str = ""
    source: str = ""
    verified: bool = True
    note: str = ""


@dataclass
class Baseline:
    path: Path
    kind: str  # "own" (json, from a run) or "reported" (csv, published)
    cells: dict[Key, BaselineCell]
    meta: dict = field(default_factory=dict)

    @property
    def tolerance_pp(self) -> float:
        return float(self.meta.get("tolerance_pp", DEFAULT_TOLERANCE_PP))

    @property
    def protocol_hash(self) -> str | None:
        return (self.meta.get("protocol") or {}).get("hash")


def load(path: Path) -> Baseline:
    """Read a baseline file; anything malformed is a one-line error naming file and place."""
    path = Path(path)
    if not path.is_file():
        raise DDBenchError(f"baseline {str(path)!r} does not exist; write one with "
                           "`ddbench check BASELINE.json --update` or use results/baselines/reported.csv")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DDBenchError(f"baseline {str(path)!r} cannot be read: {exc}") from None
    if path.suffix == ".json":
        return _load_json(path, text)
    if path.suffix == ".csv":
        return _load_csv(path, text)
    raise DDBenchError(f"baseline {str(path)!r}: unknown format {path.suffix!r}; valid choices: .csv, .json")


def _bad(path: Path, where: str, what: str) -> DDBenchError:
    return DDBenchError(f"malformed baseline {str(path)!r} ({where}): {what}")


def _number(path, where, name, value, *, required=False, integer=False):
    if value is None or (isinstance(value, str) and value.strip() in ("", "-", "–")):
        if required:
            raise _bad(path, where, f"{name} is missing")
        return None
    try:
        v = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise _bad(path, where, f"{name} {value!r} is not a number") from None
    if not integer and not math.isfinite(v):
        raise _bad(path, where, f"{name} {value!r} is not finite")
    if (integer and v < 1) or (not integer and v < 0):
        raise _bad(path, where, f"{name} {value!r} must be {'a positive integer' if integer else '>= 0'}")
    return v


def _key(path, where, d: dict) -> Key:
    parts = {}
    for name in ("method", "dataset", "ipc", "model"):
        v = str(d.get(name) or "").strip()
        if not v:
            raise _bad(path, where, f"{name} is missing")
        parts[name] = v
    ipc = parts["ipc"]
    if ipc != "all" and not (ipc.isdigit() and int(ipc) > 0):
        raise _bad(path, where, f"ipc {ipc!r} must be a positive integer or 'all'")
    return Key(parts["dataset"], str(d.get("conditions") or "clean").strip(), ipc, parts["model"],
               parts["method"])


def _add(path, where, cells: dict, cell: BaselineCell) -> None:
    if cell.key in cells:
        raise _bad(path, where, f"duplicate cell {cell.key.short()}")
    if cell.mean > 100:
        raise _bad(path, where, f"mean {cell.mean} is above 100 (accuracies are percentages)")
    cells[cell.key] = cell


def _load_csv(path: Path, text: str) -> Baseline:
    meta, body = {}, []
    for line in text.splitlines():
        if line.startswith("#"):
            k, sep, v = line[1:].partition(":")
            if sep and k.strip() in CSV_META:
                meta[k.strip()] = v.strip()
        elif line.strip():
            body.append(line)
    reader = csv.DictReader(io.StringIO("\n".join(body)))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_CSV if c not in header]
    if missing:
        raise _bad(path, "header", f"missing column(s) {', '.join(missing)}; columns: {', '.join(CSV_COLUMNS)}")
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise _bad(path, "header", f"unknown column(s) {', '.join(unknown)}; valid: {', '.join(CSV_COLUMNS)}")
    if "tolerance_pp" in meta:
        meta["tolerance_pp"] = _number(path, "metadata", "tolerance_pp", meta["tolerance_pp"])
    cells: dict[Key, BaselineCell] = {}
    for i, row in enumerate(reader, start=2):
        where = f"row {i}"
        if None in row:
            raise _bad(path, where, "more fields than columns")
        labels = (row.get("labels") or "hard").strip()
        if labels not in LABELS:
            raise _bad(path, where, f"labels {labels!r}; valid choices: {', '.join(LABELS)}")
        verified = (row.get("verified") or "yes").strip().lower()
        if verified not in ("yes", "no"):
            raise _bad(path, where, f"verified {verified!r}; valid choices: yes, no")
        std = _number(path, where, "std", row.get("std"))
        _add(path, where, cells, BaselineCell(
            _key(path, where, row), _number(path, where, "mean", row.get("mean"), required=True),
            math.nan if std is None else std, _number(path, where, "n", row.get("n"), integer=True),
            labels=labels, protocol=(row.get("protocol") or "").strip(),
            source=(row.get("source") or "").strip(), verified=verified == "yes",
            note=(row.get("note") or "").strip()))
    if not cells:
        raise _bad(path, "body", "no rows")
    return Baseline(path, "reported", cells, meta)


def _load_json(path: Path, text: str) -> Baseline:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(path, f"line {exc.lineno}", f"not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise _bad(path, "format", f"expected \"format\": \"{FORMAT}\", got {got!r}")
    if not isinstance(doc.get("cells"), list) or not doc["cells"]:
        raise _bad(path, "cells", "expected a non-empty list of cells")
    meta = {k: v for k, v in doc.items() if k != "cells"}
    if "tolerance_pp" in meta:
        meta["tolerance_pp"] = _number(path, "tolerance_pp", "tolerance_pp", meta["tolerance_pp"])
    cells: dict[Key, BaselineCell] = {}
    for i, c in enumerate(doc["cells"]):
        where = f"cell {i}"
        if not isinstance(c, dict):
            raise _bad(path, where, "expected an object")
        values = c.get("values") or {}
        if not isinstance(values, dict):
            raise _bad(path, where, "values must map unit ids to accuracies")
        values = {str(k): _number(path, where, f"values[{k}]", v, required=True) for k, v in values.items()}
        mean = _number(path, where, "mean", c.get("mean"), required=True)
        std = _number(path, where, "std", c.get("std"))
        n = _number(path, where, "n", c.get("n"), integer=True)
        if values and n is not None and n != len(values):
            raise _bad(path, where, f"n = {n} but {len(values)} values")
        _add(path, where, cells, BaselineCell(
            _key(path, where, c), mean, math.nan if std is None else std, n, unit=str(c.get("unit") or ""),
            values=values, labels=str(c.get("labels") or "hard")))
    return Baseline(path, "own", cells, meta)


def dump(baseline: Baseline) -> str:
    """The JSON text of an own baseline (stable order, so diffs of updates are readable)."""
    cells = []
    for key in sorted(baseline.cells):
        c = baseline.cells[key]
        d = {k: v for k, v in asdict(key).items()}
        d.update(unit=c.unit, n=c.n, mean=round(c.mean, 4),
                 std=None if math.isnan(c.std) else round(c.std, 4),
                 values={k: round(v, 4) for k, v in c.values.items()})
        cells.append(d)
    doc = {"format": FORMAT, **{k: v for k, v in baseline.meta.items() if k != "format"}, "cells": cells}
    return json.dumps(doc, indent=1) + "\n"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
