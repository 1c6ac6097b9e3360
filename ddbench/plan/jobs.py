"""The plan: synthetic-set jobs and their evaluation cells, with their keys and seeds.

Keys are content hashes of everything that determines a result (``ddbench.keys``). Random
seeds come from the user's seed and the data coordinates (dataset, conditions, IPC) but
not the method, so two methods with the same seed start from the same real images and
evaluate with the same network initialisations: a paired design.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ddbench.data.conditions import dataset_label
from ddbench.evaluation import protocol as proto
from ddbench.keys import digest, seed_of
from ddbench.plan.parse import MethodSpec
from ddbench.plan.resolve import Resolved, Resolver
from ddbench.registry import Registry


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
    condition: str  # ``ddbench.data.conditions``: clean, zca, ...
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
    def dataset_name(self) -> str:
        """The dataset as stored: its spec, with the parameters that differ from their defaults
        (``imagefolder:DIR[stats=cifar10]``), so that two settings never pool in a table.
        Keys use the spec and the parameters (``dataset_spec``, ``dataset``)."""
        extra = self.dataset.non_default()
        return self.dataset_spec + ("[" + ",".join(f"{k}={v}" for k, v in extra) + "]" if extra else "")

    @property
    def dataset_label(self) -> str:
        """The dataset as tables show it: ``cifar10``, or ``cifar10 [zca]`` under a condition."""
        return dataset_label(self.dataset_name, self.condition)

    @property
    def ipc_label(self) -> str:
        return "all" if self.ipc is None else str(self.ipc)

    def params_record(self) -> dict:
        """Stored with every row: the method's parameters and those of the components they
        name (e.g. ``mi_estimators:nce``), so that reports can tell variants apart."""
        return {**method_params(self.base, self.objectives),
                **{f"{k}:{n}": r.params_dict() for (k, n), r in sorted(self.parts.items())}}


def method_params(base: Resolved, objectives: list[Resolved], keyed: bool = False) -> dict:
    """{component name: params} of a method: stored with every row and, without the
    distiller's ``locators`` (``keyed``), part of its key."""
    own = base.params_dict()
    if keyed:
        own = {k: v for k, v in own.items() if k not in base.entry.cls.locators}
    return {base.name: own, **{o.name: o.params_dict() for o in objectives}}


def _model_refs(resolved: Resolved) -> list[str]:
    """Model names a distiller will build (its ``model`` parameter, by convention)."""
    name = getattr(resolved.params, "model", None)
    return [name] if isinstance(name, str) else []


def build_plan(
    registry: Registry,
    resolver: Resolver,
    specs: list[MethodSpec],
    datasets: list[Resolved],
    dataset_specs: list[tuple[str, str | None]],
    ipcs: list[int],
    models: list[str],
    seeds: list[int],
    conditions: list[str],
) -> list[Job]:
    """Every job of the cross-product, each with its cells (see the module docstring)."""
    model_variants = [v for m in models for v in resolver.models(m)]
    protocols = resolver.protocols()
    jobs: list[Job] = []
    for spec in specs:
        base_cls = registry.get("distillers", spec.base).cls
        for (dspec, darg), dres in zip(dataset_specs, datasets, strict=True):
            for ipc in _ipcs(spec, base_cls, ipcs):
                bases = resolver.variants("distillers", spec.base, dres.name, ipc)
                if spec.arg is not None:
                    bases = [base_cls.with_argument(b, spec.arg, spec.text) for b in bases]
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


def _ipcs(spec: MethodSpec, base_cls, ipcs: list[int]) -> list[int | None]:
    """The IPCs a method is planned at: ``--ipc``, none (``full``), or its own (a file's)."""
    if not base_cls.uses_ipc:
        return [None]
    own = base_cls.own_ipc(spec.arg) if spec.arg is not None else None
    return [own] if own is not None else ipcs


def _job(spec, base, objs, dres, dspec, darg, ipc, condition, seed, distill_models, parts, models,
         protocols) -> Job:
    data_coords = {"dataset": dspec, "dataset_params": dres.params_dict(), "conditions": condition, "ipc": ipc}
    rng_seed = seed_of(data_coords, seed)
    key = digest({
        "method": spec.key_text,
        "params": method_params(base, objs, keyed=True),
        "distill_models": {n: r.params_dict() for n, r in sorted(distill_models.items())},
        # only when present, so that the keys of methods without references never change
        **({"parts": {f"{k}:{n}": r.params_dict() for (k, n), r in sorted(parts.items())}} if parts else {}),
        **data_coords,
        "seed": seed,
    })
    job = Job(key, spec, base, objs, dres, dspec, darg, ipc, condition, seed, rng_seed, distill_models,
              parts)
    for model in models:
        for choice in protocols:
            protocol, swept = choice.for_cell(base.entry.cls.paper_protocol, dres.name, model), choice.swept
            for i in range(protocol.params.num_eval):
                cell_key = digest({"job": key, "model": model.name, "model_params": model.params_dict(),
                                   "protocol": protocol.hash, "eval_index": i})
                eval_seed = seed_of(data_coords, seed, model.name, model.params_dict(), protocol.hash, i)
                job.cells.append(Cell(cell_key, model, protocol, swept, i, eval_seed))
    return job
