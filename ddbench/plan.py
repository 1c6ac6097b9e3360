"""From command-line choices to the plan: synthetic-set jobs and their evaluation cells.

A method spec is ``base[+objective...]``. ``--set NS.PARAM=V`` overrides a parameter of
the component named NS (a distiller, objective, model, dataset, or ``eval`` for the
protocol); ``--set NS.PARAM=V1,V2`` makes a sweep axis of the cross-product. Parameters
resolve as: the component's defaults (the reference's values), then its preset values,
then ``--set``.

Keys are content hashes of everything that determines a result. Random seeds come from
the user's seed and the data coordinates (dataset, conditions, IPC) but not the method,
so two methods with the same seed start from the same real images and evaluate with the
same network initialisations: a paired design.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from ddbench import params as P
from ddbench import protocol as proto
from ddbench.conditions import dataset_label
from ddbench.errors import DDBenchError
from ddbench.registry import KINDS, Entry, Registry

PRESETS = ("small", "paper")


def digest(obj: Any, n: int = 20) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def seed_of(*parts: Any) -> int:
    return int(digest(parts, 15), 16)


# ------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class MethodSpec:
    text: str
    base: str
    objectives: tuple[str, ...]


def parse_method(text: str, registry: Registry) -> MethodSpec:
    parts = [p.strip() for p in text.split("+")]
    if not all(parts):
        raise DDBenchError(f"malformed method {text!r}: expected base[+objective...], e.g. dm+mim")
    registry.get("distillers", parts[0])
    for obj in parts[1:]:
        registry.get("objectives", obj)
    if len(set(parts[1:])) != len(parts[1:]):
        raise DDBenchError(f"method {text!r} attaches the same objective twice")
    return MethodSpec(text, parts[0], tuple(parts[1:]))


def parse_sets(items: list[str]) -> dict[tuple[str, str], list[str]]:
    """``["dm.lr_img=0.5,1"]`` -> ``{("dm", "lr_img"): ["0.5", "1"]}``."""
    out: dict[tuple[str, str], list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        ns, dot, name = key.strip().partition(".")
        values = [v.strip() for v in value.split(",")]
        if not sep or not dot or not ns or not name or not all(values):
            raise DDBenchError(
                f"malformed --set {item!r}: expected NAME.PARAM=VALUE[,VALUE...], e.g. dm.lr_img=0.5,1"
            )
        if (ns, name) in out:
            raise DDBenchError(f"--set {ns}.{name} is given twice")
        out[(ns, name)] = values
    return out


def parse_int_list(text: str, what: str, minimum: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DDBenchError(f"invalid {what} {text!r}: expected integers, e.g. 1,10") from None
    if not values:
        raise DDBenchError(f"invalid {what} {text!r}: expected at least one integer")
    for v in values:
        if v < minimum:
            raise DDBenchError(f"invalid {what} {v}: must be >= {minimum}")
    return list(dict.fromkeys(values))


def model_entry(registry: Registry, spec: str) -> tuple[Entry, str | None]:
    """``"timm:resnet50"`` -> (the ``timm`` entry, ``"resnet50"``); ``"convnet"`` -> (entry, None)."""
    name, sep, arg = spec.partition(":")
    entry = registry.get("models", name)
    takes = getattr(entry.cls, "argument", None)
    if takes and not arg:
        raise DDBenchError(f"model {name!r} needs an argument: {name}:{takes.upper()} (e.g. {name}:resnet50)")
    if not takes and sep:
        raise DDBenchError(f"model {name!r} takes no argument; got {spec!r}")
    return entry, (arg or None)


def split_list(text: str) -> list[str]:
    return list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))


# ------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolved:
    """A component with concrete parameters; ``swept`` holds the values of sweep axes."""

    entry: Entry
    params: Any
    swept: tuple[tuple[str, Any], ...] = ()
    #: the spec as written when it carries an argument (``timm:resnet50``); the argument
    #: itself is a parameter, so keys depend on it through the parameters only
    spec: str = ""

    @property
    def name(self) -> str:
        return self.entry.name

    def params_dict(self) -> dict:
        """The parameters that key and describe a result (``late_params`` at their neutral
        value left out)."""
        late = getattr(self.entry.cls, "late_params", {})
        return {k: v for k, v in P.as_dict(self.params).items() if not (k in late and late[k] == v)}

    def instance(self):
        return self.entry.cls(self.params)

    @property
    def label(self) -> str:
        name = self.spec or self.name
        if not self.swept:
            return name
        return name + "[" + ",".join(f"{k}={v}" for k, v in self.swept) + "]"


class Resolver:
    """Resolves component parameters from preset + ``--set``; tracks which names were used."""

    def __init__(self, registry: Registry, preset: str, sets: dict[tuple[str, str], list[str]]):
        if preset not in PRESETS:
            raise DDBenchError(f"unknown preset {preset!r}; valid choices: {', '.join(PRESETS)}")
        self.registry = registry
        self.preset = preset
        self.sets = sets
        self.used: set[str] = set()
        self.applied: set[tuple[str, str]] = set()

    def _combos(self, ns: str, params_cls, preset_values: dict, sweep: bool = True):
        """(params, swept) for every combination of ``ns``'s sweep axes (one if none).

        With ``sweep=False``, only the single-valued overrides apply (one result).
        """
        self.used.add(ns)
        parsed = {
            key: [P.parse_overrides(params_cls, {key: v}, ns)[key] for v in values]
            for (n, key), values in self.sets.items()
            if n == ns and (self._has(params_cls, key) or not self._namesake_has(ns, key))
        }
        self.applied.update((ns, key) for key in parsed)
        axes = {k: v for k, v in parsed.items() if len(v) > 1} if sweep else {}
        fixed = {k: v[0] for k, v in parsed.items() if len(v) == 1}
        for combo in itertools.product(*axes.values()):
            swept = tuple(zip(axes.keys(), combo, strict=True))
            yield P.build(params_cls, {**preset_values, **fixed, **dict(swept)}, ns), swept

    @staticmethod
    def _has(params_cls, key: str) -> bool:
        return any(f.name == key for f in P.fields(params_cls))

    def _namesake_has(self, ns: str, key: str) -> bool:
        """Whether another component named ``ns`` (of another kind: the ``mim`` distiller and
        the ``mim`` objective) takes ``key``; then ``--set ns.key`` is meant for that one."""
        return any(e.name == ns and self._has(e.cls.Params, key)
                   for kind in KINDS for e in self.registry.entries(kind))

    def variants(self, kind: str, name: str, dataset: str | None = None,
                 ipc: int | None = None) -> list[Resolved]:
        """Every parameter combination of component ``name`` (one unless swept); preset
        values may depend on the dataset and IPC (e.g. MTT's per-setting table)."""
        entry = self.registry.get(kind, name)
        presets = entry.cls.preset_values(self.preset, dataset, ipc)
        return [Resolved(entry, p, s) for p, s in self._combos(name, entry.cls.Params, presets)]

    def single(self, kind: str, name: str) -> Resolved:
        """The component with its non-swept parameters (for distillation-time models)."""
        entry = self.registry.get(kind, name)
        presets = entry.cls.preset_values(self.preset, None, None)
        ((params, _),) = self._combos(name, entry.cls.Params, presets, sweep=False)
        return Resolved(entry, params)

    def models(self, spec: str, sweep: bool = True) -> list[Resolved]:
        """Variants of a model spec, ``name`` or ``name:ARG`` (``timm:resnet50``): the
        argument sets the model's ``argument`` parameter, over ``--set``."""
        entry, arg = model_entry(self.registry, spec)
        if not sweep:
            found = [self.single("models", entry.name)]
        else:
            found = self.variants("models", entry.name)
        if arg is None:
            return found
        return [Resolved(r.entry, dataclasses.replace(r.params, **{entry.cls.argument: arg}), r.swept, spec)
                for r in found]

    def protocols(self) -> list[tuple[proto.Protocol, tuple]]:
        out = []
        presets = proto.PRESETS[self.preset]
        for params, swept in self._combos(proto.NAMESPACE, proto.ProtocolParams, presets):
            if params.num_eval < 1 or params.epochs < 0:
                raise DDBenchError("eval.num_eval must be >= 1 and eval.epochs >= 0")
            out.append((proto.Protocol(params, self.preset), swept))
        return out

    def check_unused(self) -> list[str]:
        """``--set`` for components outside this run: checked, then warned about.

        An unknown name is an error; a registered component that the run does not use
        gets its parameters validated and a warning (sweep scripts often share --set).
        """
        warnings = []
        for ns in sorted({ns for ns, _ in self.sets} - self.used):
            entries = [e for kind in KINDS for e in self.registry.entries(kind) if e.name == ns]
            if not entries:
                valid = sorted({e.name for kind in KINDS for e in self.registry.entries(kind)} | {proto.NAMESPACE})
                key = next(k for n, k in self.sets if n == ns)
                raise DDBenchError(
                    f"--set {ns}.{key}: no component is named {ns!r}; valid names: {', '.join(valid)}"
                )
            for key, values in self.sets.items():
                if key[0] == ns:
                    for v in values:
                        P.parse_overrides(entries[0].cls.Params, {key[1]: v}, ns)
            warnings.append(f"--set {ns}.* has no effect: {ns!r} is not part of this run")
        for ns, key in sorted(set(self.sets) - self.applied):
            if ns in self.used:  # a namesake's parameter (the mim distiller's, in dm+mim)
                warnings.append(f"--set {ns}.{key} has no effect: no {ns!r} in this run takes {key!r}")
        return warnings


# ------------------------------------------------------------------------- the plan


@dataclass
class Cell:
    """One evaluation: a model trained with a protocol on a synthetic set (one row)."""

    key: str
    model: Resolved
    protocol: proto.Protocol
    protocol_swept: tuple
    eval_index: int
    seed: int

    @property
    def model_label(self) -> str:
        lab = self.model.label
        if self.protocol_swept:
            lab += " eval[" + ",".join(f"{k}={v}" for k, v in self.protocol_swept) + "]"
        return lab


@dataclass
class Job:
    """One synthetic set: (method, params, dataset, conditions, IPC, seed) and its cells."""

    key: str
    method: MethodSpec
    base: Resolved
    objectives: list[Resolved]
    dataset: Resolved
    dataset_spec: str
    dataset_arg: str | None
    ipc: int | None  # None: the method ignores IPC (``full``)
    condition: str  # ``ddbench.conditions``: clean, zca, ...
    seed: int
    rng_seed: int
    distill_models: dict[str, Resolved]
    #: other components the method's parameters name (``references``): (kind, name) -> resolved
    parts: dict[tuple[str, str], Resolved] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    @property
    def label(self) -> str:
        parts = [self.base.label] + [o.label for o in self.objectives]
        return "+".join(parts)

    @property
    def dataset_label(self) -> str:
        """The dataset as tables show it: ``cifar10``, or ``cifar10 [zca]`` under a condition."""
        return dataset_label(self.dataset_spec, self.condition)

    @property
    def ipc_label(self) -> str:
        return "all" if self.ipc is None else str(self.ipc)

    def params_record(self) -> dict:
        """Stored with every row: the method's parameters and those of the components they
        name (e.g. ``mi_estimators:nce``), so that reports can tell variants apart."""
        return {**method_params(self.base, self.objectives),
                **{f"{k}:{n}": r.params_dict() for (k, n), r in sorted(self.parts.items())}}


def method_params(base: Resolved, objectives: list[Resolved]) -> dict:
    """{component name: params} of a method: part of its key and of every stored row."""
    return {base.name: base.params_dict(), **{o.name: o.params_dict() for o in objectives}}


def _model_refs(resolved: Resolved) -> list[str]:
    """Model names a distiller will build (its ``model`` parameter, by convention)."""
    name = getattr(resolved.params, "model", None)
    return [name] if isinstance(name, str) else []


def build_plan(
    registry: Registry,
    resolver: Resolver,
    methods: list[str],
    datasets: list[Resolved],
    dataset_specs: list[tuple[str, str | None]],
    ipcs: list[int],
    models: list[str],
    seeds: list[int],
    conditions: list[str],
) -> list[Job]:
    specs = [parse_method(m, registry) for m in methods]
    model_variants = [v for m in models for v in resolver.models(m)]
    protocols = resolver.protocols()
    jobs: list[Job] = []
    for spec in specs:
        base_cls = registry.get("distillers", spec.base).cls
        for (dspec, darg), dres in zip(dataset_specs, datasets, strict=True):
            for ipc in (ipcs if base_cls.uses_ipc else [None]):
                bases = resolver.variants("distillers", spec.base, dres.name, ipc)
                obj_variants = [resolver.variants("objectives", o, dres.name, ipc) for o in spec.objectives]
                for base, objs in itertools.product(bases, itertools.product(*obj_variants)):
                    distill_models, parts = {}, {}
                    for comp in (base, *objs):
                        for mname in _model_refs(comp):
                            (distill_models[mname],) = resolver.models(mname, sweep=False)
                        for param, kind in comp.entry.cls.references.items():
                            ref = getattr(comp.params, param)
                            parts[(kind, ref)] = resolver.single(kind, ref)
                    for condition, seed in itertools.product(conditions, seeds):
                        jobs.append(
                            _job(spec, base, list(objs), dres, dspec, darg, ipc, condition, seed,
                                 distill_models, parts, model_variants, protocols)
                        )
    return jobs


def _job(spec, base, objs, dres, dspec, darg, ipc, condition, seed, distill_models, parts, models,
         protocols) -> Job:
    data_coords = {"dataset": dspec, "dataset_params": dres.params_dict(), "conditions": condition, "ipc": ipc}
    rng_seed = seed_of(data_coords, seed)
    key = digest({
        "method": spec.text,
        "params": method_params(base, objs),
        "distill_models": {n: r.params_dict() for n, r in sorted(distill_models.items())},
        # only when present, so that the keys of methods without references never change
        **({"parts": {f"{k}:{n}": r.params_dict() for (k, n), r in sorted(parts.items())}} if parts else {}),
        **data_coords,
        "seed": seed,
    })
    job = Job(key, spec, base, objs, dres, dspec, darg, ipc, condition, seed, rng_seed, distill_models,
              parts)
    for model in models:
        for protocol, swept in protocols:
            for i in range(protocol.params.num_eval):
                cell_key = digest({"job": key, "model": model.name, "model_params": model.params_dict(),
                                   "protocol": protocol.hash, "eval_index": i})
                eval_seed = seed_of(data_coords, seed, model.name, model.params_dict(), protocol.hash, i)
                job.cells.append(Cell(cell_key, model, protocol, swept, i, eval_seed))
    return job


def params_json(obj) -> str:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, default=str)
