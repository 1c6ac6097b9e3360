"""``ray``: one Ray task per job on a Ray cluster (``--address``), or on a Ray instance
started for the run when no address is given. Needs ``pip install 'ddbench[ray]'``.

Each task asks for ``ray.num_cpus`` CPUs (its torch threads) and ``ray.num_gpus`` GPUs
(default: 1 when the run's device is CUDA, else 0); the dataset tensors go into the
object store once and every task reads them from there. Results are gathered with
``ray.wait`` as tasks finish. A task whose worker or node died comes back as lost (no
automatic retry unless ``ray.max_retries`` says so): its cells are stored as failed and
the next run computes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated

from annotated_types import Ge, Gt

from ddbench import hookimpl
from ddbench.components import Executor, WorkerLost
from ddbench.errors import DDBenchError
from ddbench.params import validate
from ddbench.runtime import worker
from ddbench.runtime.engines import first_line, import_paths, require


class RayExecutor(Executor):
    """A Ray cluster (--address ADDR), or a Ray instance on this machine: one task per job."""

    name = "ray"

    @dataclass
    class Params:
        address: str = field(default="", metadata={"help": "cluster address (empty: start Ray here)"})
        jobs: Annotated[int, Ge(0)] = field(default=0, metadata={"help": "tasks in flight at most (0: all)"})
        num_cpus: Annotated[float, Gt(0)] = field(default=1.0, metadata={"help": "CPUs per task (its torch threads)"})
        num_gpus: Annotated[float | None, Ge(0)] = field(
            default=None, metadata={"help": "GPUs per task (None: 1 on CUDA)"})
        max_retries: Annotated[int, Ge(0)] = field(
            default=0, metadata={"help": "Ray's retries of a task whose worker died"})

    def __init__(self, params=None):
        super().__init__(params or self.Params())
        validate(self.params, self.name)  # the declared ranges: also for an executor built in code
        self._ray = None
        self._owned = False
        self._pending: dict = {}

    def check(self) -> None:
        require("ray", self.name)

    def start(self, device, workdir) -> None:
        ray = self._ray = require("ray", self.name)
        self._gpus = self.params.num_gpus if self.params.num_gpus is not None else float(device.type == "cuda")
        if ray.is_initialized():
            return
        kwargs = {"logging_level": logging.WARNING, "configure_logging": True}
        if self.params.address:
            kwargs["address"] = self.params.address
        else:  # a private instance for this run (not RAY_ADDRESS's cluster: say --address auto)
            kwargs.update(address="local", include_dashboard=False)
        try:
            ray.init(**kwargs)
        except Exception as exc:
            raise DDBenchError(f"cannot start or reach Ray ({self.params.address or 'local'}): "
                               f"{first_line(exc)}") from None
        self._owned = True

    def map(self, fn, items):
        ray = self._ray
        refs: dict[int, object] = {}  # id of a large tensor -> its object in the store
        keep = []  # those tensors (their ids stay theirs while the map runs)
        used: dict[int, object] = {}

        def share(t):
            if id(t) not in refs:
                keep.append(t)
                refs[id(t)] = ray.put(t)
            used[id(t)] = refs[id(t)]
            return id(t)

        threads = max(1, int(self.params.num_cpus))
        remote = ray.remote(_run).options(num_cpus=self.params.num_cpus, num_gpus=self._gpus,
                                          max_retries=self.params.max_retries)
        items = list(items)
        paths = import_paths()
        limit = self.params.jobs or len(items)
        queue = list(reversed(items))
        while queue or self._pending:
            while queue and len(self._pending) < limit:
                item = queue.pop()
                used.clear()
                blob = worker.dumps(item, share)
                self._pending[remote.remote(fn, blob, dict(used), threads, paths)] = item
            done, _ = ray.wait(list(self._pending), num_returns=1)
            item = self._pending.pop(done[0])
            try:
                events = ray.get(done[0])
            except Exception as exc:  # worker crashed, node died, out of memory, cancelled
                cause = getattr(exc, "cause", None) or exc  # RayTaskError: the task's own error
                yield item, WorkerLost(f"ray task lost: {first_line(cause)}")
                continue
            for value in events:
                yield item, value

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for ref in self._pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        self._pending.clear()
        if self._owned:
            ray.shutdown()
            self._owned = False


def _run(fn, blob, refs, threads, paths):
    """The Ray task: set up the worker, read the shared tensors, run the job to its end."""
    import ray
    import torch

    cache: dict = {}

    def fetch(key):
        if key not in cache:
            t = ray.get(refs[key])
            cache[key] = t.clone() if isinstance(t, torch.Tensor) else t  # writable, own memory
        return cache[key]

    device = worker.cuda_assignment() if ray.get_gpu_ids() else None
    return worker.run_batch(fn, blob, fetch, threads, device, paths)


@hookimpl
def register_executors(register):
    register(RayExecutor)
