"""``slurm``: one Slurm job per distillation job, submitted as a job array through submitit.
Needs ``pip install 'ddbench[slurm]'``.

Jobs, their logs and the shared dataset tensors (written once) live in ``slurm.folder``
(default: ``slurm/`` beside the store), which must be visible from the compute nodes.
``slurm.cluster=local`` runs the same jobs as local processes (submitit's LocalExecutor;
what the tests use), ``debug`` in this process. A job that fails, times out or is
cancelled comes back as lost: its cells are stored as failed and the next run retries them.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge, Gt

from ddbench import hookimpl
from ddbench.components import Executor, WorkerLost
from ddbench.errors import DDBenchError
from ddbench.params import validate
from ddbench.runtime import worker
from ddbench.runtime.engines import first_line, import_paths, require


class SlurmExecutor(Executor):
    """Slurm through submitit: a job array, one job per distillation job."""

    name = "slurm"

    @dataclass
    class Params:
        partition: str = field(default="", metadata={"help": "Slurm partition (empty: the default)"})
        timeout_min: Annotated[int, Ge(1)] = field(default=60, metadata={"help": "time limit of each job, minutes"})
        gpus_per_node: Annotated[int | None, Ge(0)] = field(
            default=None, metadata={"help": "GPUs per job (None: 1 on CUDA)"})
        cpus_per_task: Annotated[int, Ge(1)] = field(default=1, metadata={"help": "CPUs per job (its torch threads)"})
        mem_gb: Annotated[int, Ge(0)] = field(default=0, metadata={"help": "memory per job (0: the partition's default)"})
        jobs: Annotated[int, Ge(0)] = field(default=0, metadata={"help": "jobs of the array running at once (0: no limit)"})
        folder: str = field(default="", metadata={"help": "submitit folder (default: slurm/ beside the store)"})
        cluster: Literal["auto", "slurm", "local", "debug"] = "auto"
        poll_s: Annotated[float, Gt(0)] = field(default=2.0, metadata={"help": "seconds between checks of the jobs"})

    def __init__(self, params=None):
        super().__init__(params or self.Params())
        validate(self.params, self.name)  # the declared ranges: also for an executor built in code
        self._jobs: list = []
        self._shared: Path | None = None

    def check(self) -> None:
        require("submitit", self.name)

    def start(self, device, workdir) -> None:
        submitit = require("submitit", self.name)
        p = self.params
        self.folder = Path(p.folder) if p.folder else Path(workdir) / "slurm"
        try:
            ex = submitit.AutoExecutor(folder=self.folder / "%j", cluster=None if p.cluster == "auto" else p.cluster)
        except Exception as exc:  # no Slurm here: sbatch missing
            raise DDBenchError(f"cannot use Slurm: {first_line(exc)} "
                               "(slurm.cluster=local runs the jobs as local processes)") from None
        gpus = p.gpus_per_node if p.gpus_per_node is not None else int(device.type == "cuda")
        opts = {"timeout_min": p.timeout_min, "gpus_per_node": gpus, "cpus_per_task": p.cpus_per_task,
                "name": "ddbench"}
        if p.mem_gb:
            opts["mem_gb"] = p.mem_gb
        if p.partition:
            opts["slurm_partition"] = p.partition
        if p.jobs:
            opts["slurm_array_parallelism"] = p.jobs
        ex.update_parameters(**opts)
        self._executor, self._gpus = ex, gpus

    def map(self, fn, items):
        items = list(items)
        if not items:
            return
        self._shared = self.folder / "shared" / uuid.uuid4().hex[:12]
        self._shared.mkdir(parents=True, exist_ok=True)
        files: dict[int, str] = {}
        keep = []

        def share(t):
            if id(t) not in files:
                keep.append(t)
                path = self._shared / f"{len(files)}.pt"
                path.write_bytes(worker.tensor_bytes(t))
                files[id(t)] = str(path)
            return files[id(t)]

        blobs = [worker.dumps(item, share) for item in items]
        n = len(items)
        try:
            self._jobs = self._executor.map_array(
                _run, [fn] * n, blobs, [self.params.cpus_per_task] * n, [self._gpus > 0] * n,
                [import_paths()] * n)
        except Exception as exc:
            raise DDBenchError(f"submitting the Slurm jobs failed: {first_line(exc)}") from None
        waiting = dict(zip(range(n), self._jobs, strict=True))
        while waiting:
            finished = [i for i, job in waiting.items() if job.done()]
            if not finished:
                time.sleep(self.params.poll_s)
                continue
            for i in finished:
                job = waiting.pop(i)
                try:
                    events = job.result()
                except Exception as exc:  # failed, timed out, cancelled, node lost
                    yield items[i], WorkerLost(_lost(job, exc))
                    continue
                for value in events:
                    yield items[i], value

    def close(self) -> None:
        for job in self._jobs:
            try:
                if not job.done():
                    job.cancel(check=False)
            except Exception:  # already gone
                pass
        self._jobs = []
        if self._shared is not None:
            shutil.rmtree(self._shared, ignore_errors=True)
            self._shared = None


def _lost(job, exc: BaseException) -> str:
    """One line: the job, and submitit's two-line headline ("... has not produced any
    output (state: FAILED)") without the log it appends."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
    return f"slurm job {job.job_id} lost: {type(exc).__name__}: {' '.join(lines)}"


def _run(fn, blob, threads, gpu, paths):
    """The Slurm job: set up the worker, read the shared tensors from files, run the job."""
    cache: dict = {}

    def fetch(path):
        if path not in cache:
            cache[path] = worker.tensor_from_bytes(Path(path).read_bytes())
        return cache[path]

    device = worker.cuda_assignment() if gpu else None
    return worker.run_batch(fn, blob, fetch, threads, device, paths)


@hookimpl
def register_executors(register):
    register(SlurmExecutor)
