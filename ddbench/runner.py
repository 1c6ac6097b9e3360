"""The sweep driver: prepare the plan, drive its jobs through the executor, store every row.

``ddbench.plan.prepare`` checks everything before anything is written. Jobs run through
the chosen executor plugin (``ddbench.execution.tasks.run_job``), in this process or in
workers, and yield typed events (``ddbench.storage.records``); only this driver turns them into
rows and writes the store and the artifacts. Expert trajectories are trained here, before
any job runs, so that no two workers ever build the same buffer.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddbench.components import WorkerLost
from ddbench.errors import DDBenchError
from ddbench.execution.events import ResultEvent, SynsetEvent, failed_event
from ddbench.execution.tasks import Task, job_text, reporter, run_job
from ddbench.keys import params_json
from ddbench.plan import Job, Prepared, RunOptions, prepare, split_list
from ddbench.registry import Registry
from ddbench.runtime import compiling
from ddbench.runtime.allocator import tune_allocator
from ddbench.runtime.cost import device_name
from ddbench.runtime.progress import Progress
from ddbench.storage import artifacts, checkpoint
from ddbench.storage.atomic import deepest_existing, probe_writable
from ddbench.storage.liveness import describe
from ddbench.storage.records import ResultRow, RunRow, SynsetRow
from ddbench.storage.store import Store, check_writable
from ddbench.synthetic import SyntheticSet
from ddbench.version import __version__


def versions() -> dict:
    import numpy
    import torchvision

    return {
        "ddbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "compile": compiling.mode(),  # an execution setting (ddbench.runtime.compiling), not in any key
    }


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""



def build_experts(prepared: Prepared, job: Job, progress=None) -> int:
    """Train the missing experts of ``job``'s buffer (if any); returns how many."""
    buf = prepared.experts.get(job.key)
    if buf is None:
        return 0
    data = prepared.bundle(job)
    model = job.distill_models[buf.recipe.model]
    return buf.build(data, lambda: model.instance().build(data.channels, data.num_classes, data.image_size),
                     prepared.device, progress or (lambda step, total: None))


@dataclass
class RunSummary:
    """What a run did: its jobs, the rows of all its cells (stored earlier or now), and the
    synthetic sets' rows; ``failures`` are this run's failed rows."""

    run_id: str
    jobs: list[Job]
    rows: list[ResultRow]
    skipped: int
    ran: int
    failures: list[ResultRow]
    synsets: list[SynsetRow] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)


def run(options: RunOptions, registry: Registry, command: str = "") -> RunSummary:
    tune_allocator()
    compiling.mode()  # a bad $DDBENCH_COMPILE fails here, before anything is written
    check_writable(Path(options.store))  # fail before the (slow) data loading
    checkpoints(options)  # a bad interval fails here too
    check_folders(Path(options.store))
    prepared = prepare(options, registry)
    for w in prepared.warnings:
        print(f"ddbench: warning: {w}", file=sys.stderr)
    for n in prepared.notes:
        print(f"ddbench: {n}", file=sys.stderr)
    store = Store(Path(options.store))
    for r in store.abandoned:
        print(f"ddbench: run {r.run_id} was left running by {describe(r.driver)}, which has ended; "
              "marked abandoned (its stored cells are kept)", file=sys.stderr)
    try:
        return _execute(options, registry, prepared, store, command)
    finally:
        store.close()


def _tasks(prepared: Prepared, store: Store, policy, done: set[str], prog: Progress, executor) -> list[Task]:
    """A task per job with cells to run; expert trajectories and teachers the jobs need are
    built first, here in the driver (workers only read them)."""
    tasks = []
    for job in prepared.jobs:
        pending = [c for c in job.cells if c.key not in done]
        if not pending:
            continue
        stored, seconds = _stored_synset(store, job.key)
        if stored is not None:  # left by a driver stopped between storing the set and removing it
            checkpoint.remove(policy.path(job.key))
        buf = prepared.experts.get(job.key)
        if stored is None and buf is not None and buf.missing():  # before distilling, not timed with it
            prog.start(f"experts for {job.label} {job.dataset_label}")
            trained = build_experts(prepared, job, reporter(prog, "train experts"))
            if trained:
                print(f"ddbench: trained {trained} expert(s) for {job.label} on {job.dataset_label} "
                      f"(cached in {buf.folder})", file=sys.stderr)
        teachers = prepared.teachers.get(job.key, {})
        _build_teachers(teachers.values(), prepared.bundle(job), prepared.device, prog, job)
        # workers never see the progress display: the driver follows their events instead
        tasks.append(Task(job, pending, stored, seconds, prepared.bundle(job), prepared.device,
                          prog if executor.in_process else None, buf, policy, teachers))
    return tasks


def _build_teachers(teachers, data, device, prog, job) -> None:
    """Train the missing teachers in the driver, before the job is handed to a worker
    (workers only load them: no two train the same one)."""
    for teacher in teachers:
        if teacher.present():
            continue
        prog.start(f"teacher {teacher.label} for {job.dataset_label}")
        teacher.build(data, device, reporter(prog, "train teacher"))
        print(f"ddbench: trained teacher {teacher.label} on {job.dataset_label} ({teacher.path})", file=sys.stderr)


def checkpoints(options: RunOptions) -> checkpoint.CheckpointPolicy:
    """Checkpoints live beside the store (``checkpoints/<job key>.safetensors``), by absolute
    path: workers on this machine or on a shared file system find them from any cwd."""
    return checkpoint.CheckpointPolicy(Path(options.store).parent.absolute() / "checkpoints",
                                       options.checkpoint_every, options.checkpoint_minutes)


#: the folders a run writes beside the store, and what they hold
FOLDERS = {"artifacts": "synthetic sets", "checkpoints": "checkpoints"}


def check_folders(store: Path) -> None:
    """Fail before any work (one line, nothing written) when a folder a run writes beside
    the store (``FOLDERS``) is taken by a file or cannot be written: otherwise the first
    distillation to finish (``random``'s included) ends in a traceback. Probes with a file
    created and removed at once; a missing folder is probed where it will be created."""
    for name, holds in FOLDERS.items():
        folder = Path(store).parent / name
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise DDBenchError(f"{str(folder)!r} is not a folder; ddbench keeps its {holds} there, beside the store: "
                               f"move it away or choose another --store")
        try:
            probe_writable(deepest_existing(folder))
        except OSError as exc:
            raise DDBenchError(f"cannot write {holds} in {str(folder)!r} ({exc.strerror}): make it writable "
                               f"or choose another --store") from None


def _execute(options, registry, prepared, store, command) -> RunSummary:
    jobs, device = prepared.jobs, prepared.device
    policy = checkpoints(options)
    all_keys = [c.key for j in jobs for c in j.cells]
    done = store.done_cells(all_keys)
    config = options.as_config()
    run = RunRow(uuid.uuid4().hex[:12], command=command or shlex.join(sys.argv), preset=options.preset,
                 versions=params_json(versions()), git_rev=git_revision(), config=params_json(config))
    store.start_run(run)
    n_jobs = sum(any(c.key not in done for c in j.cells) for j in jobs)
    prog = Progress(len(all_keys) - len(done), enabled=options.progress, total_jobs=n_jobs)
    executor = prepared.executor.instance()
    ran, failures = 0, []
    status = "interrupted"
    reported: dict[int, set[str]] = {}  # id(task) -> keys of its cells stored by this run
    registry.pm.hook.run_started(run=run, config=config)
    try:  # from here on the run ends as finished or interrupted, and run_finished is called
        store.add_run_cells(run.run_id, all_keys)
        tasks = _tasks(prepared, store, policy, done, prog, executor)
        if tasks:
            executor.start(device, Path(options.store).parent)
        for task, event in executor.map(run_job, tasks) if tasks else ():
            if id(task) not in reported and not executor.in_process:
                prog.start(job_text(task.job))
            seen = reported.setdefault(id(task), set())
            if isinstance(event, SynsetEvent):
                _store_synset(store, run, task, event, device, registry)
                # stored, or failed (a failed distillation restarts clean); a lost worker's stays
                checkpoint.remove(policy.path(task.job.key))
                continue
            if isinstance(event, WorkerLost):  # its unfinished cells fail, the next run retries
                events = [failed_event(c, event.reason) for c in task.pending if c.key not in seen]
            else:
                events = [event]
            for ev in events:
                seen.add(ev.cell.key)
                row = result_row(run, task.job, ev, device)
                store.write_result(row)
                registry.pm.hook.cell_finished(record=row)
                ran += 1
                if not row.ok:
                    failures.append(row)
                prog.cell_done(row.ok)
            if len(seen) == len(task.pending) and events:
                prog.job_done()
        status = "finished"
    finally:
        try:
            executor.close()
        finally:
            prog.close()
            store.finish_run(run.run_id, status)
            run.status = status
            registry.pm.hook.run_finished(run=run, ran=ran, skipped=len(done), failed=len(failures))
    synsets = [r for r in (store.synset(j.key) for j in jobs) if r is not None]
    return RunSummary(run.run_id, jobs, store.results(all_keys), len(done), ran, failures, synsets)


def _stored_synset(store: Store, key: str) -> tuple[SyntheticSet | None, float | None]:
    """A synthetic set distilled by an earlier run, and the seconds it took."""
    row = store.synset(key)
    if row is None or not row.ok or not row.artifact:
        return None, None
    path = store.path.parent / row.artifact
    if not path.exists():
        return None, None
    return artifacts.load_synset(path), row.seconds


def _store_synset(store: Store, run: RunRow, task: Task, event: SynsetEvent, device, registry: Registry) -> None:
    job, data = task.job, task.data
    artifact = grid = None
    if event.synset is not None and job.base.entry.cls.save_artifact:
        rel = Path("artifacts") / f"{job.key}.safetensors"
        info = {"distill_key": job.key, "method": job.method.text, "params": job.params_record(),
                "dataset": job.dataset_name, "conditions": job.condition, "ipc": job.ipc, "seed": job.seed,
                "mean": data.mean, "std": data.std, "classes": data.classes}
        artifacts.save_synset(store.path.parent / rel, event.synset, info)
        artifacts.save_grid(store.path.parent / rel.with_suffix(".png"), event.synset, data.num_classes,
                           data.denormalize)
        artifact, grid = str(rel), str(rel.with_suffix(".png"))
    cost = event.cost
    row = SynsetRow(
        job.key, run_id=run.run_id, method=job.label, params=params_json(job.params_record()),
        dataset=job.dataset_name, conditions=job.condition, ipc=job.ipc, seed=job.seed,
        status=event.status, error=event.error, artifact=artifact, grid=grid,
        seconds=cost.seconds, cpu_seconds=cost.cpu_seconds, iterations=event.iterations,
        seconds_per_iter=event.seconds_per_iter, peak_mem_mb=cost.peak_mem_mb,
        device=cost.device or device_name(device), worker=cost.worker, versions=run.versions,
        num_classes=data.num_classes,
    )
    store.write_synset(row, trace=event.trace)
    root = store.path.parent.absolute()
    registry.pm.hook.synset_stored(record=row, artifact=artifact and root / artifact, grid=grid and root / grid,
                                   trace=event.trace)


def result_row(run: RunRow, job: Job, event: ResultEvent, device: torch.device) -> ResultRow:
    """The stored row of one evaluated cell."""
    cell, cost = event.cell, event.cost
    return ResultRow(
        cell.key, distill_key=job.key, run_id=run.run_id, method=job.label,
        params=params_json(job.params_record()), dataset=job.dataset_name, conditions=job.condition,
        ipc=job.ipc, seed=job.seed, model=cell.model_label, model_params=params_json(cell.model.params_dict()),
        eval_index=cell.eval_index, protocol=cell.protocol.label, protocol_hash=cell.protocol.hash,
        protocol_params=params_json(cell.protocol.as_dict()), status=event.status, accuracy=event.accuracy,
        error=event.error, distill_seconds=event.distill_seconds, seconds=cost.seconds,
        cpu_seconds=cost.cpu_seconds, peak_mem_mb=cost.peak_mem_mb,
        device=cost.device or device_name(device), worker=cost.worker, versions=run.versions,
        git_rev=run.git_rev,
    )


def enable_trackers(registry, names: str, store: str | Path, uri: str | None = None) -> list:
    """Create the trackers named by ``--track`` (comma list) through the registry and
    register them on ``registry.pm`` for this run; a bad name or a missing library is an
    error before anything is written. Their files go beside ``store``; ``uri`` is
    ``--track-uri``, for the trackers that take one."""
    wanted = split_list(names, "--track") if names else []
    entries = [registry.get("trackers", n) for n in wanted]
    if uri and not any(e.cls.takes_uri for e in entries):
        takers = [e.cls for e in registry.entries("trackers") if e.cls.takes_uri]
        raise DDBenchError(f"--track-uri is {' or '.join(t.title or t.name for t in takers) or 'no tracker'}'s "
                           f"tracking URI: use it with --track {','.join(t.name for t in takers)}")
    for e in entries:
        if uri and e.cls.takes_uri:
            e.cls.check_uri(uri)
    folder = str(Path(store).parent.resolve())
    trackers = [registry.create("trackers", e.name, folder=folder, uri=(uri or "") if e.cls.takes_uri else "")
                for e in entries]
    for tracker in trackers:
        registry.pm.register(tracker, name=f"tracker-{tracker.name}")
    return trackers
