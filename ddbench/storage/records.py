"""The shape of everything stored and of everything a job emits: one definition each.

``ResultRow`` (one evaluation), ``SynsetRow`` (one synthetic set) and ``RunRow`` (one
``ddbench run``) are the store's tables: their fields are the columns, their annotations
the SQL types, and a field added here becomes a column that older stores gain when they
are opened (``Store`` adds missing columns; their old rows read ``None`` there). The
store, the runner, results, check and report all read these records by attribute.

What a job emits before it becomes a row is in ``ddbench.execution.events``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

_SQL = {str: "TEXT", int: "INTEGER", float: "REAL"}


class Record:
    """A stored row: built from and written to SQLite by column name."""

    #: SQL table and its primary key (``None``: the record is not a table)
    table: typing.ClassVar[str] = ""
    primary: typing.ClassVar[str] = ""

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def sql_types(cls) -> dict[str, str]:
        """column -> SQL type, from the annotations (``X | None`` is X)."""
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
            out[f.name] = _SQL[args[0]]
        return out

    @classmethod
    def from_sql(cls, row) -> Record:
        """From a ``sqlite3.Row``: columns this version does not know are ignored (a store
        written by a newer ddbench still reads), missing ones are ``None``."""
        have = set(row.keys())
        return cls(**{c: row[c] if c in have else None for c in cls.columns()})

    def values(self) -> list[Any]:
        return [getattr(self, c) for c in self.columns()]

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (for JSON, trackers, plugins that log it)."""
        return dataclasses.asdict(self)

    def json_field(self, name: str) -> dict:
        """A JSON column (``params``, ``versions``, ...) decoded; ``{}`` when empty."""
        return json.loads(getattr(self, name) or "{}")


class Outcome(Record):
    """A record of work that succeeded or failed (an evaluation, a distillation): its
    dataclass has a ``status`` field, "ok" or "failed"."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class ResultRow(Outcome):
    """One evaluation: a model trained with a protocol on a synthetic set, tested."""

    table = "results"
    primary = "cell_key"

    cell_key: str
    distill_key: str | None = None
    run_id: str | None = None
    method: str | None = None
    params: str | None = None  # canonical JSON: {component: {param: value}}
    dataset: str | None = None
    conditions: str | None = None
    ipc: int | None = None  # None: the method ignores IPC (``full``)
    seed: int | None = None
    model: str | None = None
    model_params: str | None = None
    eval_index: int | None = None
    protocol: str | None = None  # name/version, e.g. ddbench-eval/v1
    protocol_hash: str | None = None
    protocol_params: str | None = None
    status: str | None = None  # "ok" or "failed"
    accuracy: float | None = None  # in [0, 1]
    error: str | None = None
    distill_seconds: float | None = None
    seconds: float | None = None
    peak_mem_mb: float | None = None
    device: str | None = None
    versions: str | None = None
    git_rev: str | None = None
    created: float | None = None
    cpu_seconds: float | None = None
    worker: str | None = None  # host:pid

    @property
    def ipc_label(self) -> str:
        return "all" if self.ipc is None else str(self.ipc)


@dataclass
class SynsetRow(Outcome):
    """One synthetic set: what was distilled, how long it took, where its files are."""

    table = "synsets"
    primary = "distill_key"

    distill_key: str
    run_id: str | None = None
    method: str | None = None
    params: str | None = None
    dataset: str | None = None
    conditions: str | None = None
    ipc: int | None = None
    seed: int | None = None
    status: str | None = None
    error: str | None = None
    artifact: str | None = None  # relative to the store's folder
    grid: str | None = None
    seconds: float | None = None
    iterations: int | None = None
    seconds_per_iter: float | None = None
    peak_mem_mb: float | None = None
    device: str | None = None
    versions: str | None = None
    created: float | None = None
    cpu_seconds: float | None = None
    worker: str | None = None
    #: the dataset's class count (the cost table shows it; None in rows stored before)
    num_classes: int | None = None


@dataclass
class RunRow(Record):
    """One ``ddbench run``: its command, preset, environment and how it ended."""

    table = "runs"
    primary = "run_id"

    run_id: str
    started: float | None = None
    finished: float | None = None
    command: str | None = None
    preset: str | None = None
    versions: str | None = None
    git_rev: str | None = None
    status: str | None = None  # one of RUN_STATUSES
    #: the fully resolved configuration (JSON; ``ddbench run --print-config``)
    config: str | None = None
    #: the process that ran it (JSON: host, pid, ...; ``ddbench.storage.liveness``), so
    #: that a run whose process was killed can be told from one still running
    driver: str | None = None


#: how a run ends: ``abandoned`` when its driver ended without saying (killed with -9)
RUN_STATUSES = ("running", "finished", "interrupted", "abandoned")


TABLES: tuple[type[Record], ...] = (RunRow, SynsetRow, ResultRow)
