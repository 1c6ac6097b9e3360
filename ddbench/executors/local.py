"""``local``: run every job in this process, in order (the default executor)."""

from __future__ import annotations

from ddbench import hookimpl
from ddbench.components import Executor


class LocalExecutor(Executor):
    """In-process, one job after another; results stream back as each cell finishes."""

    name = "local"

    def map(self, fn, items):
        for item in items:
            yield from fn(item)


@hookimpl
def register_executors(register):
    register(LocalExecutor)
