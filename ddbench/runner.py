"""The sweep driver: validate everything, plan, execute jobs, store every row.

Validation (components, parameters, data, IPC, store, the executor's engine) happens
before anything is written. Jobs run through the chosen executor plugin, in this process
or in workers, and yield events; only this driver writes the store and the artifacts.
Expert trajectories are built here, before any job runs, so that no two workers ever
build the same buffer.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import platform
import shlex
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddbench import __version__, artifacts, compiling
from ddbench import plan as planmod
from ddbench.allocator import tune_allocator
from ddbench.components import DistillContext, SyntheticSet, WorkerLost
from ddbench.conditions import apply as apply_condition
from ddbench.conditions import caps_ipc, is_seeded, parse_conditions
from ddbench.cost import device_name, measure
from ddbench.data.bundle import DataBundle
from ddbench.errors import DDBenchError
from ddbench.executors import worker
from ddbench.experts import ExpertBuffer
from ddbench.progress import Progress
from ddbench.protocol import evaluate_many
from ddbench.registry import Registry
from ddbench.store import Store, check_writable

DEFAULT_DATA_ROOT = "datasets"
DATA_ENV = "DDBENCH_DATA"


@dataclass
class RunOptions:
    methods: list[str] = field(default_factory=lambda: ["random", "dm"])
    datasets: list[str] = field(default_factory=lambda: ["digits"])
    ipcs: list[int] = field(default_factory=lambda: [1, 10])
    models: list[str] = field(default_factory=lambda: ["convnet"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    conditions: list[str] = field(default_factory=lambda: ["clean"])
    sets: list[str] = field(default_factory=list)
    preset: str = "small"
    store: Path = Path("results/ddbench.sqlite")
    data_root: Path | None = None
    download: bool = False
    device: str = "auto"
    executor: str = "local"
    #: ``--jobs`` and ``--address``: the executor's ``jobs`` and ``address`` parameters
    jobs: int | None = None
    address: str | None = None
    dry_run: bool = False
    progress: bool = True


def data_root(option: Path | None) -> Path:
    """``--data-root``, then ``$DDBENCH_DATA``, then ``datasets/``."""
    if option is not None:
        return Path(option)
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


def pick_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise DDBenchError(f"invalid device {text!r}; valid choices: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DDBenchError(f"device {text!r} requested but CUDA is not available; valid choices: auto, cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DDBenchError(f"invalid device {text!r}; valid choices: auto, cpu, cuda, cuda:N")
    return dev


def versions() -> dict:
    import numpy
    import torchvision

    return {
        "ddbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "compile": compiling.mode(),  # an execution setting (ddbench.compiling), not in any key
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


# --------------------------------------------------------------------------- planning


@dataclass
class Prepared:
    jobs: list[planmod.Job]
    bundles: dict[str, DataBundle]  # by job.dataset key (spec + params)
    device: torch.device
    warnings: list[str]
    experts: dict[str, ExpertBuffer] = field(default_factory=dict)  # by job key, when needed
    executor: planmod.Resolved | None = None

    def bundle(self, job: planmod.Job) -> DataBundle:
        return self.bundles[_bundle_key(job.dataset_spec, job.dataset, job.condition, job.seed)]

    def buffers(self) -> list[tuple[planmod.Job, ExpertBuffer]]:
        """Distinct expert buffers of the plan, each with the first job that needs it."""
        seen: dict[str, tuple[planmod.Job, ExpertBuffer]] = {}
        for job in self.jobs:
            buf = self.experts.get(job.key)
            if buf is not None and buf.key not in seen:
                seen[buf.key] = (job, buf)
        return list(seen.values())


def _expert_buffers(prepared: Prepared, root: Path) -> None:
    """The expert trajectories each job's distiller asks for (validates their recipe)."""
    for job in prepared.jobs:
        models = {n: r.params_dict() for n, r in job.distill_models.items()}
        recipe = job.base.instance().expert_recipe(prepared.bundle(job), models)
        if recipe is not None:
            ident = {"dataset": job.dataset_spec, "dataset_params": job.dataset.params_dict(),
                     "conditions": job.condition, "content": prepared.bundle(job).fingerprint()}
            prepared.experts[job.key] = ExpertBuffer(root, ident, recipe)


def build_experts(prepared: Prepared, job: planmod.Job, progress=None) -> int:
    """Train the missing experts of ``job``'s buffer (if any); returns how many."""
    buf = prepared.experts.get(job.key)
    if buf is None:
        return 0
    data = prepared.bundle(job)
    model = job.distill_models[buf.recipe.model]
    return buf.build(data, lambda: model.instance().build(data.channels, data.num_classes, data.image_size),
                     prepared.device, progress or (lambda step, total: None))


def _bundle_key(spec: str, resolved: planmod.Resolved, condition: str, seed: int) -> str:
    """Bundles are per (dataset, condition), and per seed for seeded conditions (noise)."""
    per_seed = f"/seed={seed}" if is_seeded(condition) else ""
    return f"{spec}{planmod.params_json(resolved.params_dict())}/{condition}{per_seed}"


def prepare(options: RunOptions, registry: Registry) -> Prepared:
    """Everything that can fail on bad input, before anything is written."""
    sets = planmod.parse_sets(options.sets)
    resolver = planmod.Resolver(registry, options.preset, sets)
    device = pick_device(options.device)
    executor = _executor(options, resolver)
    for m in options.methods:
        planmod.parse_method(m, registry)
    for m in options.models:
        planmod.model_entry(registry, m)
    # datasets: "name" or "name:arg", each possibly swept over its parameters
    dataset_specs, dataset_res = [], []
    for spec in options.datasets:
        name, sep, arg = spec.partition(":")
        entry = registry.get("datasets", name)
        if entry.cls.takes_argument and not arg:
            raise DDBenchError(f"dataset {name!r} needs an argument: {name}:VALUE (e.g. {name}:/path/to/data)")
        if not entry.cls.takes_argument and sep:
            raise DDBenchError(f"dataset {name!r} takes no argument; got {spec!r}")
        for res in resolver.variants("datasets", name):
            dataset_specs.append((spec, arg or None))
            dataset_res.append(res)
    conditions = parse_conditions(options.conditions)
    jobs = planmod.build_plan(
        registry, resolver, options.methods, dataset_res, dataset_specs,
        options.ipcs, options.models, options.seeds, conditions,
    )
    warnings = resolver.check_unused()
    # only now the (possibly slow) loading: every cheaper check has passed
    root = data_root(options.data_root)
    bundles = {}
    for (spec, arg), res in zip(dataset_specs, dataset_res, strict=True):
        loaded = res.instance().load(arg, root, options.download)
        for condition, seed in itertools.product(conditions, options.seeds):
            key = _bundle_key(spec, res, condition, seed)
            if key not in bundles:  # unseeded conditions: one bundle for every seed
                bundles[key] = apply_condition(loaded, condition, root, seed)
    prepared = Prepared(jobs, bundles, device, warnings, executor=executor)
    _check_ipcs(prepared)
    _check_models(prepared)
    _expert_buffers(prepared, root.absolute())  # workers may run elsewhere than this cwd
    return prepared


def _executor(options: RunOptions, resolver: planmod.Resolver) -> planmod.Resolved:
    """The executor with its parameters (``--set NAME.P=V``, then ``--jobs``/``--address``),
    checked to be usable (its optional engine installed)."""
    res = resolver.single("executors", options.executor)
    params = res.params
    for option, value in (("jobs", options.jobs), ("address", options.address)):
        if value is None:
            continue
        if params is None or not any(f.name == option for f in dataclasses.fields(params)):
            raise DDBenchError(f"--{option} is not an option of executor {options.executor!r}")
        params = dataclasses.replace(params, **{option: value})
    res = planmod.Resolved(res.entry, params)
    res.instance().check()
    return res


def _check_ipcs(prepared: Prepared) -> None:
    """Every IPC must fit the smallest class of its dataset, except under ``imbalance``,
    where a class smaller than the IPC gets all its images (``DistillContext.class_ipcs``):
    a warning says so."""
    capped = set()
    for job in prepared.jobs:
        if job.ipc is None:
            continue
        bundle = prepared.bundle(job)
        counts = bundle.class_counts()
        smallest = min(counts)
        cls = bundle.classes[counts.index(smallest)]
        if job.ipc > smallest and caps_ipc(job.condition):
            if (job.dataset_label, job.ipc) not in capped:
                capped.add((job.dataset_label, job.ipc))
                small = sum(n < job.ipc for n in counts)
                prepared.warnings.append(
                    f"ipc {job.ipc} exceeds {small} class(es) of {job.dataset_label} (smallest: {smallest} "
                    f"training images of class {cls!r}); each such class gets all its images, not {job.ipc}")
        elif job.ipc > smallest:
            raise DDBenchError(
                f"ipc {job.ipc} is larger than the smallest class of {job.dataset_spec} "
                f"({smallest} training images of class {cls!r}); valid: 1..{smallest}"
            )


def _check_models(prepared: Prepared) -> None:
    """Every model must build for its dataset's shape (e.g. ConvNet too deep for 8x8)."""
    seen = set()
    for job in prepared.jobs:
        bundle = prepared.bundle(job)
        models = [c.model for c in job.cells] + list(job.distill_models.values())
        for res in models:
            key = (res.label, planmod.params_json(res.params_dict()), job.dataset_spec)
            if key in seen:
                continue
            seen.add(key)
            try:
                net = res.instance().build(bundle.channels, bundle.num_classes, bundle.image_size)
                net.eval()
                with torch.no_grad():  # a model can build and still fail on this input size
                    net(torch.zeros(2, bundle.channels, *bundle.image_size))
            except Exception as exc:
                raise DDBenchError(
                    f"model {res.label!r} cannot be built for {job.dataset_spec} "
                    f"({bundle.channels}x{bundle.image_size[0]}x{bundle.image_size[1]}): {exc}"
                ) from None


# --------------------------------------------------------------------------- execution


@dataclass
class Task:
    """What a worker needs for one job: the job, the cells still to run, a stored set."""

    job: planmod.Job
    pending: list[planmod.Cell]
    synset: SyntheticSet | None
    distill_seconds: float | None
    data: DataBundle
    device: torch.device
    progress: Progress | None = None
    experts: ExpertBuffer | None = None


def run_task(task: Task) -> Iterator[dict]:
    """Distill (unless a stored set exists), then evaluate the pending cells, the cells of
    one model and protocol together (``eval_groups``, ``evaluate_many``).

    Yields ``{"kind": "synset", ...}`` once when it distilled, then one
    ``{"kind": "result", ...}`` per cell. Never raises for a failure of the method or
    the evaluation: those become rows with status "failed" and the error text.
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

        report = _reporter(prog, "distill")
        iterations = [0]

        def progress(step: int, total: int) -> None:
            iterations[0] = step
            report(step, total)

        ctx = DistillContext(
            data=data, ipc=job.ipc or 0, seed=job.rng_seed, device=device, objectives=objectives,
            build_model=build_model, progress=progress, experts=task.experts, component=component,
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
        distill_seconds = cost.seconds if status == "ok" else None
        yield {"kind": "synset", "status": status, "error": error, "synset": synset,
               "seconds": cost.seconds, "cpu_seconds": cost.cpu_seconds, "peak_mem_mb": cost.peak_mem_mb,
               "iterations": iterations[0] or None, "trace": ctx.trace, **where,
               "seconds_per_iter": cost.seconds / iterations[0] if iterations[0] else None}
        if synset is None:
            for cell in task.pending:
                yield {"kind": "result", "cell": cell, "status": "failed",
                       "error": f"distillation failed: {error}", "accuracy": None, "seconds": None,
                       "cpu_seconds": None, "peak_mem_mb": None, "distill_seconds": None, **where}
            return
    for cells in eval_groups(task.pending, device):
        for row in _evaluate_group(cells, synset, data, device, prog):
            yield {"kind": "result", **row, "distill_seconds": distill_seconds, **where}


def eval_groups(cells: list[planmod.Cell], device: torch.device) -> list[list[planmod.Cell]]:
    """Cells evaluated together: same model and parameters, same protocol, batching on for
    ``device``; any other cell is a group of its own. Order of first appearance."""
    groups: dict[tuple, list[planmod.Cell]] = {}
    for cell in cells:
        key = (cell.model.label, planmod.params_json(cell.model.params_dict()),
               planmod.params_json(cell.protocol.as_dict()))
        key = key if cell.protocol.params.batches_on(device) else (cell.key,)
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def _evaluate_group(cells, synset, data, device, prog) -> Iterator[dict]:
    """One row per cell. The group is timed as one piece of work: its wall and CPU seconds
    are split evenly over its cells, and each cell gets the group's peak memory. Any error
    (a diverged network included) fails every cell of the group with its text."""
    first = cells[0]
    label = f"eval {first.model.label} #" + ",".join(str(c.eval_index) for c in cells)
    try:
        with measure(device) as cost:
            nets = []
            for cell in cells:  # each net initialised from its own seed, as when run alone
                torch.manual_seed(cell.seed)
                nets.append(cell.model.instance().build(data.channels, data.num_classes, data.image_size))
            accs = evaluate_many(nets, synset, data, first.protocol, [c.seed for c in cells], device,
                                 progress=_reporter(prog, label))
        rows = [{"status": "ok", "error": None, "accuracy": acc} for acc in accs]
    except Exception as exc:
        rows = [{"status": "failed", "error": _error_text(exc), "accuracy": None}] * len(cells)
    for cell, row in zip(cells, rows, strict=True):
        yield {"cell": cell, **row, "seconds": cost.seconds / len(cells),
               "cpu_seconds": cost.cpu_seconds / len(cells), "peak_mem_mb": cost.peak_mem_mb}


def _reporter(prog: Progress | None, phase: str):
    if prog is None:
        return lambda step, total: None
    return lambda step, total: prog.update(phase, step, total)


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


@dataclass
class RunSummary:
    run_id: str
    jobs: list[planmod.Job]
    rows: list[dict]
    skipped: int
    ran: int
    failed: int
    synsets: list[dict] = field(default_factory=list)  # the jobs' stored distillations


def run(options: RunOptions, registry: Registry, command: str = "") -> RunSummary:
    tune_allocator()
    compiling.mode()  # a bad $DDBENCH_COMPILE fails here, before anything is written
    check_writable(Path(options.store))  # fail before the (slow) data loading
    prepared = prepare(options, registry)
    for w in prepared.warnings:
        print(f"ddbench: warning: {w}", file=sys.stderr)
    store = Store(Path(options.store))
    try:
        return _execute(options, registry, prepared, store, command)
    finally:
        store.close()


def _execute(options, registry, prepared, store, command) -> RunSummary:
    jobs, device = prepared.jobs, prepared.device
    all_keys = [c.key for j in jobs for c in j.cells]
    done = store.done_cells(all_keys)
    run_id = uuid.uuid4().hex[:12]
    vers, rev = versions(), git_revision()
    store.start_run(run_id, command or shlex.join(sys.argv), options.preset, vers, rev)
    store.add_run_cells(run_id, all_keys)
    pending_total = len(all_keys) - len(done)
    prog = Progress(pending_total, enabled=options.progress)
    executor = prepared.executor.instance()
    tasks = []
    for job in jobs:
        pending = [c for c in job.cells if c.key not in done]
        if not pending:
            continue
        bundle = prepared.bundle(job)
        stored, seconds = _stored_synset(store, job.key)
        buf = prepared.experts.get(job.key)
        if stored is None and buf is not None and buf.missing():  # before distilling, not timed with it
            if prog:
                prog.start(f"experts for {job.label} {job.dataset_label}")
            trained = build_experts(prepared, job, _reporter(prog, "train experts"))
            if trained:
                print(f"ddbench: trained {trained} expert(s) for {job.label} on {job.dataset_label} "
                      f"(cached in {buf.folder})", file=sys.stderr)
        # workers never see the progress display: the driver follows their events instead
        tasks.append(Task(job, pending, stored, seconds, bundle, device,
                          prog if executor.in_process else None, prepared.experts.get(job.key)))
    ran = failed = 0
    status = "interrupted"
    reported: dict[int, set[str]] = {}  # id(task) -> keys of its cells stored by this run
    try:
        if tasks:
            executor.start(device, Path(options.store).parent)
        for task, event in executor.map(run_job, tasks) if tasks else ():
            job = task.job
            if id(task) not in reported and not executor.in_process:
                prog.start(_job_text(job))
            seen = reported.setdefault(id(task), set())
            if isinstance(event, WorkerLost):  # its unfinished cells fail, the next run retries
                events = [_lost_event(cell, event.reason) for cell in task.pending if cell.key not in seen]
            elif event["kind"] == "synset":
                _store_synset(store, run_id, job, task.data, event, vers, device)
                continue
            else:
                events = [event]
            for ev in events:
                seen.add(ev["cell"].key)
                row = _result_row(run_id, job, ev, vers, rev, device)
                store.write_result(row)
                registry.pm.hook.cell_finished(record=row)
                ran += 1
                failed += row["status"] != "ok"
                prog.cell_done(row["status"] == "ok")
        status = "finished"
    finally:
        try:
            executor.close()
        finally:
            prog.close()
            store.finish_run(run_id, status)
    rows = store.results(all_keys)
    synsets = [r for r in (store.synset(j.key) for j in jobs) if r is not None]
    return RunSummary(run_id, jobs, rows, len(done), ran, failed, synsets)


def _job_text(job: planmod.Job) -> str:
    return f"{job.label} {job.dataset_label} ipc={job.ipc_label} seed={job.seed}"


def run_job(task: Task):
    """What a worker runs for one job (``Executor.map``'s function): its events."""
    if task.progress:
        task.progress.start(_job_text(task.job))
    yield from run_task(task)


def _lost_event(cell: planmod.Cell, reason: str) -> dict:
    return {"kind": "result", "cell": cell, "status": "failed", "error": reason, "accuracy": None,
            "seconds": None, "cpu_seconds": None, "peak_mem_mb": None, "distill_seconds": None,
            "device": None, "worker": None}


def _stored_synset(store: Store, key: str) -> tuple[SyntheticSet | None, float | None]:
    """A synthetic set distilled by an earlier run, and the seconds it took."""
    row = store.synset(key)
    if row is None or row["status"] != "ok" or not row["artifact"]:
        return None, None
    path = store.path.parent / row["artifact"]
    if not path.exists():
        return None, None
    return artifacts.load_synset(path), row["seconds"]


def _store_synset(store, run_id, job, data, event, vers, device) -> None:
    artifact = grid = None
    synset = event["synset"]
    if synset is not None and job.base.entry.cls.save_artifact:
        rel = Path("artifacts") / f"{job.key}.safetensors"
        info = {"distill_key": job.key, "method": job.method.text, "params": job.params_record(),
                "dataset": job.dataset_spec, "conditions": job.condition, "ipc": job.ipc, "seed": job.seed,
                "mean": data.mean, "std": data.std, "classes": data.classes}
        artifacts.save_synset(store.path.parent / rel, synset, info)
        artifacts.save_grid(store.path.parent / rel.with_suffix(".png"), synset, data)
        artifact, grid = str(rel), str(rel.with_suffix(".png"))
    store.write_synset({
        "distill_key": job.key, "run_id": run_id, "method": job.label,
        "params": planmod.params_json(job.params_record()), "dataset": job.dataset_spec,
        "conditions": job.condition, "ipc": job.ipc, "seed": job.seed,
        "status": event["status"], "error": event["error"], "artifact": artifact, "grid": grid,
        "seconds": event["seconds"], "cpu_seconds": event.get("cpu_seconds"),
        "iterations": event["iterations"], "seconds_per_iter": event["seconds_per_iter"],
        "peak_mem_mb": event["peak_mem_mb"], "device": event.get("device") or device_name(device),
        "worker": event.get("worker"), "versions": planmod.params_json(vers),
    }, trace=event.get("trace"))


def _result_row(run_id, job, event, vers, rev, device) -> dict:
    cell = event["cell"]
    return {
        "cell_key": cell.key, "distill_key": job.key, "run_id": run_id, "method": job.label,
        "params": planmod.params_json(job.params_record()), "dataset": job.dataset_spec,
        "conditions": job.condition, "ipc": job.ipc, "seed": job.seed,
        "model": cell.model_label, "model_params": planmod.params_json(cell.model.params_dict()),
        "eval_index": cell.eval_index, "protocol": cell.protocol.label,
        "protocol_hash": cell.protocol.hash,
        "protocol_params": planmod.params_json(cell.protocol.as_dict()),
        "status": event["status"], "accuracy": event["accuracy"], "error": event["error"],
        "distill_seconds": event["distill_seconds"], "seconds": event["seconds"],
        "cpu_seconds": event.get("cpu_seconds"), "peak_mem_mb": event["peak_mem_mb"],
        "device": event.get("device") or device_name(device), "worker": event.get("worker"),
        "versions": planmod.params_json(vers), "git_rev": rev,
    }
