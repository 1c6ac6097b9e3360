"""A row from outside the store (an export's ``results.json``) checked as if ddbench had
just written it, before the store takes it.

The runner writes: keys that are digests (never paths), known statuses, an accuracy in
[0, 1] on ``ok`` rows and none on failed ones, finite non-negative timings, integers that
SQLite holds (signed 64 bits) and no smaller than a plan allows, JSON objects in the JSON
columns, and cell keys that are the digest of the row's own fields (``ddbench.plan.jobs``).
A row that breaks any of this would be stored as it comes and break every later report
(a NaN accuracy does), so it is refused with one line naming the field and the value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from ddbench.errors import DDBenchError
from ddbench.keys import digest
from ddbench.storage.records import RUN_STATUSES, Record, ResultRow, RunRow, SynsetRow

#: keys as ddbench makes them (``keys.digest``; a run id is 12 hex digits of a uuid4):
#: anything else is no key of a run, and could name a path outside the folder
KEY_DIGITS = {"cell_key": 20, "distill_key": 20, "run_id": 12}
KEYS = {col: re.compile(f"[0-9a-f]{{{n}}}") for col, n in KEY_DIGITS.items()}
#: what SQLite's INTEGER holds
INT64 = 2**63 - 1
#: JSON nesting: an export needs 6 levels (a trace's points); deeper is no export of ddbench
MAX_DEPTH = 32
#: what the runner writes (``ddbench.execution.tasks``, ``ddbench.runner``, ``Store``)
STATUSES = {ResultRow: ("failed", "ok"), SynsetRow: ("failed", "ok"), RunRow: tuple(sorted(RUN_STATUSES))}
#: columns every row of this kind has had since it was stored (the others may be null in
#: rows written before they existed)
REQUIRED = {
    ResultRow: ("distill_key", "dataset", "seed", "model", "model_params", "eval_index", "protocol_hash",
                "status"),
    SynsetRow: ("dataset", "seed", "status"),
    RunRow: ("started", "status"),
}
#: the least value an integer column takes in a plan (IPC >= 1, seeds and indices >= 0)
MINIMUM = {"ipc": 1, "seed": 0, "eval_index": 0, "iterations": 0, "num_classes": 1}
#: columns holding a JSON object (reports decode them)
JSON_COLUMNS = ("params", "model_params", "protocol_params", "versions", "config", "driver")
_PY = {"TEXT": (str,), "INTEGER": (int,), "REAL": (int, float)}

Bad = Callable[[str, str], DDBenchError]


def load_json(text: str, bad: Callable[[str], DDBenchError]) -> Any:
    """``text`` as JSON, refused (``bad(message)``) when nested deeper than ``MAX_DEPTH`` or
    when an object repeats a key (readers disagree on which value counts)."""
    try:
        value = json.loads(text, object_pairs_hook=_unique, parse_int=_int)
    except RecursionError:
        raise bad(f"nested deeper than {MAX_DEPTH} levels") from None
    except _Refused as exc:
        raise bad(exc.args[0]) from None
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc})") from None
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise bad(f"nested deeper than {MAX_DEPTH} levels")
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return value


class _Refused(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise _Refused(f"an object repeats the key {k[:60]!r}")
            seen.add(k)
    return out


def _int(text: str) -> int:
    """An integer literal; one of thousands of digits is refused before Python converts it
    (slowly, or not at all past its digit limit): the rows check the range of the rest."""
    digits = len(text.lstrip("-"))
    if digits > 40:
        raise _Refused(f"an integer of {digits} digits; integers are at most 64 bits")
    return int(text)


def text_ok(value: str) -> bool:
    """Whether ``value`` can be stored as text (JSON's ``\\ud800`` escapes cannot: no UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def record(cls: type[Record], value, where: str, bad: Bad) -> Record:
    """A row from its JSON object, every known column checked as the runner writes it
    (unknown columns, from a newer ddbench, are ignored as the store ignores them)."""
    if not isinstance(value, dict):
        raise bad(where, "expected a JSON object")
    for col, sql in cls.sql_types().items():
        v = value.get(col)
        at = f"{where}.{col}"
        if v is None:
            if col in REQUIRED[cls] or col == cls.primary:
                raise bad(at, "missing (null); ddbench always writes it")
            continue
        if isinstance(v, bool) or not isinstance(v, _PY[sql]):
            raise bad(at, f"expected {sql.lower()}, found {json.dumps(v, allow_nan=True)[:40]}")
        if isinstance(v, str):
            _check_text(cls, col, v, at, bad)
        elif col == "accuracy":
            continue  # with the status, below
        elif sql == "INTEGER":
            low = MINIMUM.get(col, -INT64 - 1)
            if not low <= v <= INT64:
                raise bad(at, f"{v} is out of range; expected an integer in [{low}, {INT64}]")
        elif not (abs(v) <= INT64 and math.isfinite(v) and v >= 0):  # timings, sizes, times
            raise bad(at, f"{v} is out of range; expected a finite number >= 0")
    row = cls(**{c: value.get(c) for c in cls.columns()})
    if cls is ResultRow:
        _check_accuracy(row, where, bad)
    return row


def _check_text(cls, col: str, v: str, at: str, bad: Bad) -> None:
    if not text_ok(v):
        raise bad(at, f"{v[:40]!r} is not text (a lone surrogate)")
    if col in KEY_DIGITS:
        if not KEYS[col].fullmatch(v):
            raise bad(at, f"{v[:60]!r} is not a key; expected {KEY_DIGITS[col]} hex digits")
    elif col == "status" and v not in STATUSES[cls]:
        raise bad(at, f"{v[:40]!r} is not a status; expected one of: {', '.join(STATUSES[cls])}")
    elif col in JSON_COLUMNS and not isinstance(_decoded(v), dict):
        raise bad(at, f"not a JSON object ({v[:40]!r})")


def _decoded(text: str) -> Any:
    """A JSON column's value, or None when it is no JSON within the limits."""
    try:
        return load_json(text, DDBenchError)
    except DDBenchError:
        return None


def _check_accuracy(row: ResultRow, where: str, bad: Bad) -> None:
    acc, at = row.accuracy, f"{where}.accuracy"
    if acc is None:
        if row.ok:
            raise bad(at, "missing (null); an ok row has one")
        return
    if not (abs(acc) <= 1 and math.isfinite(acc) and 0 <= acc <= 1):
        raise bad(at, f"{acc} is not an accuracy (a finite number in [0, 1])")
    if not row.ok:
        raise bad(at, f"{acc} on a failed row; a failed row has none")


def model_name(label: str) -> str:
    """The registered model of a stored model label (``timm:resnet50[width=2] eval[lr=0.1]``
    -> ``timm``): the name the cell key hashes."""
    return re.match(r"[^:\[ ]*", label).group(0)


def cell_key(row: ResultRow) -> str:
    """The key the plan gives the cell of ``row``, from its own fields (``ddbench.plan.jobs``)."""
    return digest({"job": row.distill_key, "model": model_name(row.model), "model_params": json.loads(row.model_params),
                   "protocol": row.protocol_hash, "eval_index": row.eval_index})


def check_cell_key(row: ResultRow, where: str, bad: Bad) -> None:
    expected = cell_key(row)
    if row.cell_key != expected:
        raise bad(f"{where}.cell_key", f"{row.cell_key!r} is not the key of the row's fields "
                                       f"(distill_key, model, model_params, protocol_hash, eval_index give {expected!r})")


def trace(key: str, series, bad: Bad) -> None:
    """A set's trace as ``Store.trace`` returns it: {series: [[step, value], ...]}, steps
    increasing integers, values numbers (null: SQLite stores a NaN so) but never NaN."""
    if not isinstance(series, dict):
        raise bad(f"traces[{key!r}]", "expected {series: [[step, value], ...]}")
    for name, points in series.items():
        at = f"traces[{key!r}][{name!r}]"
        if not text_ok(name):
            raise bad(at, "not text (a lone surrogate)")
        if not isinstance(points, list):
            raise bad(at, "expected [[step, value], ...]")
        last = None
        for i, p in enumerate(points):
            if not (isinstance(p, list) and len(p) == 2 and type(p[0]) is int
                    and (p[1] is None or type(p[1]) in (int, float))):
                raise bad(f"{at}[{i}]", f"expected [step, value], found {json.dumps(p)[:40]}")
            step, value = p
            if not 0 <= step <= INT64:
                raise bad(f"{at}[{i}]", f"step {step} is out of range; expected an integer in [0, {INT64}]")
            if last is not None and step <= last:
                raise bad(f"{at}[{i}]", f"step {step} does not follow step {last}")
            if isinstance(value, float) and math.isnan(value):
                raise bad(f"{at}[{i}]", "value nan is not a number")
            if type(value) is int and abs(value) > INT64:
                raise bad(f"{at}[{i}]", f"value {value} is out of range; expected a number in [{-INT64}, {INT64}]")
            last = step


def differences(a: Record, b: Record, columns) -> list[tuple[str, Any, Any]]:
    """(column, value in ``a``, value in ``b``) for each of ``columns`` where the rows differ."""
    return [(c, getattr(a, c), getattr(b, c)) for c in columns if getattr(a, c) != getattr(b, c)]
