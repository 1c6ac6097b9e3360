"""What runs inside a worker for one job: distil (unless a stored set is given), then
evaluate the job's pending cells, yielding typed events (``ddbench.storage.records``).

Every executor runs ``run_job``: in the driver's process (``local``) or in workers
(local processes, Ray tasks, Slurm array tasks). Nothing here touches the store: the
driver turns the events into rows.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ddbench.context import DistillContext
from ddbench.data.bundle import DataBundle
from ddbench.errors import DDBenchError
from ddbench.evaluation.batched import evaluate_many
from ddbench.evaluation.experts import ExpertBuffer
from ddbench.evaluation.teacher import Teacher
from ddbench.execution.events import Cost, ResultEvent, SynsetEvent, failed_event
from ddbench.keys import params_json
from ddbench.plan import Cell, Job
from ddbench.runtime import worker
from ddbench.runtime.cost import device_name, measure
from ddbench.runtime.progress import Progress
from ddbench.storage.checkpoint import Checkpointer, CheckpointPolicy
from ddbench.synthetic import SyntheticSet


@dataclass
class Task:
    """What a worker needs for one job: the job, the cells still to run, a stored set."""

    job: Job
    pending: list[Cell]
    synset: SyntheticSet | None
    distill_seconds: float | None
    data: DataBundle
    device: torch.device
    progress: Progress | None = None
    experts: ExpertBuffer | None = None
    #: where and how often the distillation checkpoints (a folder the workers can reach)
    checkpoint: CheckpointPolicy | None = None
    #: protocol hash -> the (trained, cached) teacher of soft/teacher-label cells
    teachers: dict[str, Teacher] = field(default_factory=dict)


def run_task(task: Task) -> Iterator[SynsetEvent | ResultEvent]:
    """Distill (unless a stored set exists), then evaluate the pending cells, the cells of
    one model and protocol together (``eval_groups``, ``evaluate_many``).

    Yields one ``SynsetEvent`` when it distilled, then one ``ResultEvent`` per cell. Never
    raises for a failure of the method or the evaluation: those become events with status
    "failed" and the error text.
    """
    job, data, prog = task.job, task.data, task.progress
    device = worker.device_for(task.device)  # a worker's own GPU, when it has one
    where = {"device": device_name(device), "worker": worker.worker_id()}
    synset, distill_seconds = task.synset, task.distill_seconds
    if synset is None:
        distiller = job.base.instance()
        objectives = [o.instance() for o in job.objectives]

        def build_model(name: str):
            res = job.distill_models.get(name)
            if res is None:
                raise DDBenchError(f"{job.base.name} builds model {name!r}, which is not planned")
            return res.instance().build(data.channels, data.num_classes, data.image_size)

        def component(kind: str, name: str):
            res = job.parts.get((kind, name))
            if res is None:
                raise DDBenchError(f"{job.label} asks for {kind} {name!r}, which its parameters do not name")
            return res.instance()

        report = reporter(prog, "distill")
        iterations = [0]

        def progress(step: int, total: int) -> None:
            iterations[0] = step
            report(step, total)

        policy = task.checkpoint
        # a checkpoint's step must lie within the budget, where the distiller names one ``iterations``
        budget = getattr(getattr(distiller, "params", None), "iterations", None)
        ckpt = None if policy is None else Checkpointer(policy.path(job.key), job.key, policy.every, policy.minutes,
                                                        budget if type(budget) is int else None)
        ctx = DistillContext(
            data=data, ipc=job.ipc or 0, seed=job.rng_seed, device=device, objectives=objectives,
            build_model=build_model, progress=progress, experts=task.experts, component=component,
            checkpointer=ckpt,
        )
        torch.manual_seed(job.rng_seed)
        try:
            with measure(device) as cost:
                for obj in objectives:
                    obj.setup(ctx)
                synset = distiller.distill(ctx)
            synset.validate(data, job.base.name)
            status, error = "ok", None
        except Exception as exc:  # a failing method is a result, not a crash of the sweep
            status, error = "failed", _error_text(exc)
            synset = None
        if ckpt is not None and ckpt.resumed_from is not None:  # the earlier runs' seconds up to
            cost.seconds += ckpt.prior[0]  # the checkpoint count; the work lost after it does not
            cost.cpu_seconds += ckpt.prior[1]
            print(f"ddbench: {job_text(job)} resumed at iteration {ckpt.resumed_from} ({ckpt.path})",
                  file=sys.stderr)
        distill_seconds = cost.seconds if status == "ok" else None
        yield SynsetEvent(status, error, synset, Cost(cost.seconds, cost.cpu_seconds, cost.peak_mem_mb, **where),
                          iterations[0] or None, ctx.trace)
        if synset is None:
            for cell in task.pending:
                yield failed_event(cell, f"distillation failed: {error}", Cost(**where))
            return
    for cells in eval_groups(task.pending, device):
        teacher = task.teachers.get(cells[0].protocol.hash)
        yield from _evaluate_group(cells, synset, data, device, prog, distill_seconds, where, teacher)


def eval_groups(cells: list[Cell], device: torch.device) -> list[list[Cell]]:
    """Cells evaluated together: same model and parameters, same protocol, batching on for
    ``device``; any other cell is a group of its own. Order of first appearance."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        key = (cell.model.label, params_json(cell.model.params_dict()),
               params_json(cell.protocol.as_dict()))
        key = key if cell.protocol.params.batches_on(device) else (cell.key,)
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def _evaluate_group(cells, synset, data, device, prog, distill_seconds, where, teacher=None) -> Iterator[ResultEvent]:
    """One event per cell. The group is timed as one piece of work: its wall and CPU seconds
    are split evenly over its cells, and each cell gets the group's peak memory. Any error
    (a diverged network included) fails every cell of the group with its text."""
    first = cells[0]
    label = f"eval {first.model.label} #" + ",".join(str(c.eval_index) for c in cells)
    try:
        with measure(device) as cost:
            teacher_net = None if teacher is None else teacher.load(data, device)
            nets = []
            for cell in cells:  # each net initialised from its own seed, as when run alone
                torch.manual_seed(cell.seed)
                nets.append(cell.model.instance().build(data.channels, data.num_classes, data.image_size))
            accs = evaluate_many(nets, synset, data, first.protocol, [c.seed for c in cells], device,
                                 progress=reporter(prog, label), teacher=teacher_net)
        outcomes = [("ok", None, acc) for acc in accs]
    except Exception as exc:
        outcomes = [("failed", _error_text(exc), None)] * len(cells)
    share = Cost(cost.seconds / len(cells), cost.cpu_seconds / len(cells), cost.peak_mem_mb, **where)
    for cell, (status, error, acc) in zip(cells, outcomes, strict=True):
        yield ResultEvent(cell, status, error, acc, share, distill_seconds)


def reporter(prog: Progress | None, phase: str):
    if prog is None:
        return lambda step, total: None
    return lambda step, total: prog.update(phase, step, total)


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def job_text(job: Job) -> str:
    return f"{job.label} {job.dataset_label} ipc={job.ipc_label} seed={job.seed}"


def run_job(task: Task):
    """What a worker runs for one job (``Executor.map``'s function): its events."""
    if task.progress:
        task.progress.start(job_text(task.job))
    yield from run_task(task)

