"""What a job yields, in the worker, to the driver: one event per distillation and per
evaluated cell. The driver alone turns them into stored rows (``ddbench.storage.records``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddbench.plan import Cell
    from ddbench.synthetic import SyntheticSet


@dataclass
class Cost:
    """Where and how expensively a piece of work ran."""

    seconds: float | None = None
    cpu_seconds: float | None = None
    peak_mem_mb: float | None = None
    device: str | None = None
    worker: str | None = None


@dataclass
class SynsetEvent:
    """A job distilled its set (``synset`` is None when it failed)."""

    status: str
    error: str | None
    synset: SyntheticSet | None
    cost: Cost
    iterations: int | None = None
    trace: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def seconds_per_iter(self) -> float | None:
        return self.cost.seconds / self.iterations if self.iterations and self.cost.seconds else None


@dataclass
class ResultEvent:
    """A job evaluated one cell."""

    cell: Cell
    status: str
    error: str | None
    accuracy: float | None
    cost: Cost
    distill_seconds: float | None = None


def failed_event(cell: Cell, error: str, cost: Cost | None = None) -> ResultEvent:
    """A cell that could not be evaluated (its distillation failed, its worker died)."""
    return ResultEvent(cell, "failed", error, None, cost or Cost())
