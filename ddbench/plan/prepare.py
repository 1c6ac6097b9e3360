"""Preparing a run: every input parsed and checked, the data loaded, the plan built.

``prepare`` does everything that can fail on bad input (components, parameters and their
declared ranges, data, IPC, models, the executor's engine, expert recipes) before the
runner writes anything; what it returns is all the runner needs to drive the jobs.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddbench import params as P
from ddbench.data.bundle import DataBundle
from ddbench.data.conditions import apply as apply_condition
from ddbench.data.conditions import caps_ipc, is_seeded, parse_conditions
from ddbench.errors import DDBenchError
from ddbench.evaluation.augment import resolve_strategy
from ddbench.evaluation.experts import ExpertBuffer
from ddbench.evaluation.teacher import Teacher, TeacherRecipe
from ddbench.keys import params_json
from ddbench.plan import score_cells
from ddbench.plan.jobs import Job, build_plan
from ddbench.plan.parse import model_entry, parse_method, parse_sets
from ddbench.plan.resolve import Resolved, Resolver
from ddbench.registry import Registry

DEFAULT_DATA_ROOT = "datasets"
DATA_ENV = "DDBENCH_DATA"


#: option fields named otherwise in config files (as on the command line: ``--ipc``)
CONFIG_NAMES = {"ipcs": "ipc"}


@dataclass
class RunOptions:
    """What the user asked for, as lists of specs; ``prepare`` parses and checks it."""

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
    #: checkpoint a distillation every N iterations and/or M minutes (0: not by that);
    #: execution settings, in no result key (``ddbench.storage.checkpoint``)
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    #: add the cells DD-Ranking's scores need (``ddbench.plan.score_cells``): random and full, hard
    #: labels beside the asked ones, evaluation with and without augmentation
    scores: bool = False

    def as_config(self) -> dict:
        """Every option as a config file holds it (``ddbench.plan.config``): plain values, lists
        as lists, ``--set`` as ``set: {NS.PARAM: value or list}``; running it plans the same cells."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("dry_run", "progress"):
                continue
            if f.name == "sets":
                parsed = parse_sets(value)
                value = {f"{ns}.{key}": (vals[0] if len(vals) == 1 else vals) for (ns, key), vals in parsed.items()}
                out["set"] = value
                continue
            out[CONFIG_NAMES.get(f.name, f.name)] = str(value) if isinstance(value, Path) else value
        return out


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


@dataclass
class Prepared:
    """A checked plan with everything its jobs need: data bundles, device, expert buffers
    (planned, not yet trained), the executor, and warnings for the user."""

    jobs: list[Job]
    bundles: dict[str, DataBundle]  # by job.dataset key (spec + params)
    device: torch.device
    warnings: list[str]
    experts: dict[str, ExpertBuffer] = field(default_factory=dict)  # by job key, when needed
    executor: Resolved | None = None
    #: job key -> protocol hash -> the teacher its soft/teacher-label cells need
    teachers: dict[str, dict[str, Teacher]] = field(default_factory=dict)
    #: what the user should know about the plan (files read, teachers): printed, not warnings
    notes: list[str] = field(default_factory=list)

    def bundle(self, job: Job) -> DataBundle:
        return self.bundles[_bundle_key(job.dataset_spec, job.dataset, job.condition, job.seed)]

    def buffers(self) -> list[tuple[Job, ExpertBuffer]]:
        """Distinct expert buffers of the plan, each with the first job that needs it."""
        return _first_per_key((job, self.experts[job.key]) for job in self.jobs if job.key in self.experts)

    def distinct_teachers(self) -> list[tuple[Job, Teacher]]:
        """Distinct teachers of the plan, each with the first job that needs it."""
        return _first_per_key((job, t) for job in self.jobs for t in self.teachers.get(job.key, {}).values())


def _first_per_key(pairs) -> list:
    """(job, thing) pairs with one per ``thing.key`` (its first job), in order."""
    seen: dict[str, tuple] = {}
    for job, thing in pairs:
        seen.setdefault(thing.key, (job, thing))
    return list(seen.values())


def _dataset_identity(prepared: Prepared, job: Job) -> dict:
    return {"dataset": job.dataset_spec, "dataset_params": job.dataset.params_dict(),
            "conditions": job.condition, "content": prepared.bundle(job).fingerprint()}


def _check_teachers(jobs: list[Job], registry: Registry) -> None:
    """Teacher names of soft/teacher-label protocols must be registered models (cheap, early)."""
    for teacher in dict.fromkeys(c.protocol.params.teacher for j in jobs for c in j.cells
                                 if c.protocol.params.labels != "hard"):
        registry.get("models", teacher)


def _check_files(prepared: Prepared, ipcs: list[int], eval_lr: list[str] | None) -> None:
    """Sets given as files (``file:PATH``) must fit their dataset (shape, channels, classes,
    finite values): read and checked now, so a bad file is an error before anything is written.
    A set's learned lr replaces the protocol's, so an explicit ``--set eval.lr`` (``eval_lr``)
    beside one would be ignored: an error naming both, never a silent choice."""
    seen = set()
    for job in prepared.jobs:
        if job.method.arg is None or (job.key, job.dataset_label) in seen:
            continue
        seen.add((job.key, job.dataset_label))
        synset, space = job.base.instance().load(prepared.bundle(job), job.label)
        if synset.lr is not None and eval_lr:
            raise DDBenchError(f"{job.label}: the set's learned lr {synset.lr:g} replaces eval.lr, so --set "
                               f"eval.lr={','.join(eval_lr)} would be ignored; drop it, or evaluate a copy of "
                               "the set without its lr")
        soft = "" if synset.soft_labels is None else f", soft labels ({synset.soft_kind})"
        lr = "" if synset.lr is None else f", lr {synset.lr:g}"
        prepared.notes.append(f"{job.label} on {job.dataset_label}: sha256 {job.base.params.sha256[:12]}, "
                              f"{len(synset.images)} images (ipc {job.ipc_label}){soft}{lr}; images {space}")
        if job.ipc not in ipcs:
            prepared.warnings.append(f"{job.label} holds {job.ipc} images per class, not in --ipc "
                                     f"{','.join(map(str, ipcs))}: no other method shares its row (add --ipc {job.ipc})")


def _teachers(prepared: Prepared, resolver: Resolver, root: Path) -> None:
    """The teacher each soft/teacher-label cell needs; none for soft labels of a method
    whose sets carry their own (``Distiller.gives_soft_labels``)."""
    for job in prepared.jobs:
        own_soft = job.base.instance().gives_soft_labels()
        bundle = prepared.bundle(job)
        for protocol in {c.protocol.hash: c.protocol for c in job.cells}.values():
            p = protocol.params
            if p.labels == "hard" or (p.labels == "soft" and own_soft):
                continue
            model = resolver.single("models", p.teacher)
            # the teacher is one network whatever the students' augmentation: trained with DSA
            strategy = resolve_strategy(p.dsa_strategy, bundle.dsa_strategy)
            recipe = TeacherRecipe(p.teacher, params_json(model.params_dict()), p.teacher_epochs, strategy)
            teacher = Teacher(root, _dataset_identity(prepared, job), recipe, model)
            prepared.teachers.setdefault(job.key, {})[protocol.hash] = teacher


def _expert_buffers(prepared: Prepared, root: Path) -> None:
    """The expert trajectories each job's distiller asks for (validates their recipe)."""
    for job in prepared.jobs:
        models = {n: r.params_dict() for n, r in job.distill_models.items()}
        recipe = job.base.instance().expert_recipe(prepared.bundle(job), models)
        if recipe is not None:
            prepared.experts[job.key] = ExpertBuffer(root, _dataset_identity(prepared, job), recipe)



def _bundle_key(spec: str, resolved: Resolved, condition: str, seed: int) -> str:
    """Bundles are per (dataset, condition), and per seed for seeded conditions (noise)."""
    per_seed = f"/seed={seed}" if is_seeded(condition) else ""
    return f"{spec}{params_json(resolved.params_dict())}/{condition}{per_seed}"


def prepare(options: RunOptions, registry: Registry) -> Prepared:
    """Everything that can fail on bad input, before anything is written."""
    sets = parse_sets(options.sets)
    method_texts = list(options.methods)
    if options.scores:
        method_texts, sets = score_cells.with_score_cells(method_texts, sets)
    resolver = Resolver(registry, options.preset, sets)
    device = pick_device(options.device)
    executor = _executor(options, resolver)
    methods = [parse_method(m, registry) for m in method_texts]
    for m in options.models:  # the cheap name checks first; resolver.models() resolves them
        model_entry(registry, m)
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
    jobs = build_plan(
        registry, resolver, methods, dataset_res, dataset_specs,
        options.ipcs, options.models, options.seeds, conditions,
    )
    warnings = resolver.check_unused()
    _check_teachers(jobs, registry)
    if options.scores:
        for job in jobs:
            job.cells = [c for c in job.cells if score_cells.needed(job.base.name, c.protocol.params)]
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
    _teachers(prepared, resolver, root.absolute())
    _check_files(prepared, options.ipcs, sets.get(("eval", "lr")))
    _learned_lr(prepared, sets.get(("eval", "lr")))
    for job, t in prepared.distinct_teachers():
        prepared.notes.append(f"teacher {t.label} for {job.dataset_label}: "
                              f"{'present' if t.present() else 'to train'} ({t.path})")
    return prepared


def _learned_lr(prepared: Prepared, eval_lr: list[str] | None) -> None:
    """A method whose sets learn their evaluation lr (MTT) is evaluated with it, whatever
    ``eval.lr`` says: the precedence is the reference's, and said here, never silent."""
    if not eval_lr:
        return
    for name in sorted({j.base.name for j in prepared.jobs if j.base.entry.cls.learns_lr}):
        prepared.warnings.append(f"{name}'s sets carry a learned lr, which replaces --set eval.lr="
                                 f"{','.join(eval_lr)} when they are evaluated (as in the reference)")


def _executor(options: RunOptions, resolver: Resolver) -> Resolved:
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
        P.validate(params, options.executor)
    res = Resolved(res.entry, params)
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
            key = (res.label, params_json(res.params_dict()), job.dataset_spec)
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
