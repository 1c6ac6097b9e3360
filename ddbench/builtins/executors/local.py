"""``local``: run the jobs in this process (the default), or in ``--jobs N`` worker processes.

Workers are spawned (not forked: no inherited CUDA or thread state), each with
``max(1, cores // N)`` torch threads unless ``local.threads`` says otherwise, and own a
device round-robin over the visible CUDA devices (cpu when there are none). A worker
that dies (killed, out of memory) is reported for the job it held and replaced.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Annotated

import torch
from annotated_types import Ge

from ddbench import hookimpl
from ddbench.components import Executor, WorkerLost
from ddbench.params import validate
from ddbench.runtime import worker
from ddbench.runtime.engines import cpu_count


class LocalExecutor(Executor):
    """In this process, one job after another; or in --jobs N worker processes."""

    name = "local"

    @dataclass
    class Params:
        jobs: Annotated[int, Ge(1)] = field(default=1, metadata={"help": "worker processes (1: in this process)"})
        threads: Annotated[int, Ge(0)] = field(default=0, metadata={"help": "torch threads per worker (0: cores // jobs)"})

    def __init__(self, params=None):
        super().__init__(params or self.Params())
        validate(self.params, self.name)  # the declared ranges: also for an executor built in code
        self._pool: _Pool | None = None

    @property
    def in_process(self) -> bool:
        return self.params.jobs == 1

    def map(self, fn, items):
        if self.in_process:
            for item in items:
                for value in fn(item):
                    yield item, value
            return
        threads = self.params.threads or max(1, cpu_count() // self.params.jobs)
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i}" for i in range(n)] or [None]
        self._pool = _Pool(self.params.jobs, threads, devices)
        try:
            yield from self._pool.map(fn, items)
        finally:
            self._pool.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


class _Worker:
    def __init__(self, ctx, index: int, threads: int, device: str | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker.serve, args=(child, threads, device), daemon=True,
                                name=f"ddbench-worker-{index}")
        self.proc.start()
        child.close()
        self.index = index
        self.sent: set[int] = set()  # large tensors this process already holds
        self.item = None
        self.eof = False

    def share(self, t: torch.Tensor):
        key = id(t)
        if key in self.sent:
            return ("get", key)
        self.sent.add(key)
        return ("put", key, worker.tensor_bytes(t))

    def read(self) -> list[tuple]:
        """Every message available now; sets ``eof`` once the process has gone."""
        out = []
        try:
            while not self.eof and self.conn.poll():
                out.append(pickle.loads(self.conn.recv_bytes()))
        except (EOFError, OSError):
            self.eof = True
        return out

    def death(self) -> str:
        self.proc.join(5)
        code = self.proc.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        return f"worker process {self.proc.pid} died ({how})"


class _Pool:
    def __init__(self, jobs: int, threads: int, devices: list[str | None]):
        self.ctx = multiprocessing.get_context("spawn")
        self.jobs, self.threads, self.devices = jobs, threads, devices
        self.workers: list[_Worker] = []
        self._keep: list = []  # the tasks sent: tensor ids stay valid while they live

    def _spawn(self, index: int) -> _Worker:
        return _Worker(self.ctx, index, self.threads, self.devices[index % len(self.devices)])

    def _assign(self, w: _Worker, fn, item) -> None:
        self._keep.append(item)
        w.item = item
        w.conn.send_bytes(worker.dumps((fn, item), w.share))

    def map(self, fn, items):
        queue = deque(items)
        self.workers = [self._spawn(i) for i in range(min(self.jobs, len(queue)))]
        for w in self.workers:
            self._assign(w, fn, queue.popleft())
        while any(w.item is not None for w in self.workers):
            busy = [w for w in self.workers if w.item is not None]
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for w in busy:
                for kind, value in w.read():
                    if kind == "event":
                        yield w.item, value
                        continue
                    if kind == "error":
                        yield w.item, WorkerLost(f"worker error: {value}")
                    w.item = None
                    if queue:
                        self._assign(w, fn, queue.popleft())
                if w.eof:  # the process is gone (its end of the pipe closed with it)
                    lost, reason = w.item, w.death()
                    w.conn.close()
                    self.workers.remove(w)
                    if queue:
                        fresh = self._spawn(w.index)
                        self.workers.append(fresh)
                        self._assign(fresh, fn, queue.popleft())
                    if lost is not None:
                        yield lost, WorkerLost(reason)

    def close(self) -> None:
        for w in self.workers:
            try:
                if w.proc.is_alive() and w.item is None:
                    w.conn.send_bytes(b"")
            except OSError:
                pass
        for w in self.workers:
            w.proc.join(5 if w.item is None else 0)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self.workers = []
        self._keep = []


@hookimpl
def register_executors(register):
    register(LocalExecutor)
