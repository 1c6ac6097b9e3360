"""Resolving components' parameters: defaults, then preset values, then ``--set``.

``--set NS.PARAM=V`` overrides a parameter of the component named NS (a distiller,
objective, model, dataset, executor, or ``eval`` for the protocol); ``--set
NS.PARAM=V1,V2`` makes a sweep axis. Every value is parsed and checked against its
field's declaration (``ddbench.params``) here, at planning, before anything is written.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from ddbench import params as P
from ddbench.errors import DDBenchError
from ddbench.evaluation import protocol as proto
from ddbench.plan.parse import model_entry
from ddbench.registry import PARAM_KINDS, Entry, Registry

PRESETS = ("small", "paper")


def namespaces(registry: Registry) -> list[str]:
    """Every NS that ``--set NS.PARAM`` accepts: the registered components' names and ``eval``."""
    return sorted({e.name for kind in PARAM_KINDS for e in registry.entries(kind)} | {proto.NAMESPACE})


def params_classes(registry: Registry, ns: str) -> list[type]:
    """The ``Params`` classes that ``--set NS.*`` may address (several for namesakes)."""
    if ns == proto.NAMESPACE:
        return [proto.ProtocolParams]
    return [e.cls.Params for kind in PARAM_KINDS for e in registry.entries(kind) if e.name == ns and e.cls.Params]


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

    def non_default(self) -> tuple[tuple[str, Any], ...]:
        """The parameters (as ``params_dict`` keys them) that differ from the component's
        defaults, swept or set."""
        cls = self.entry.cls.Params
        default = P.as_dict(cls()) if cls is not None else {}
        return tuple((k, v) for k, v in self.params_dict().items() if k not in default or default[k] != v)

    def instance(self):
        return self.entry.cls(self.params)

    @property
    def label(self) -> str:
        name = self.spec or self.name
        if not self.swept:
            return name
        return name + "[" + ",".join(f"{k}={v}" for k, v in self.swept) + "]"


@dataclass(frozen=True)
class ProtocolChoice:
    """One variant of ``--set eval.*``: made concrete per method, dataset and model by
    ``for_cell`` (the registered ``ProtocolSpec``: which named protocol, and its rules; starred
    where a preset or ``--set`` moved a paper's protocol off its published values)."""

    params: proto.ProtocolParams
    swept: tuple
    explicit: frozenset[str]
    preset: str
    #: the registered protocols by name
    named: dict = field(compare=False)

    def for_cell(self, paper_protocol: str | None, dataset: str, model: Resolved) -> proto.Protocol:
        chosen = proto.choose(self.named, self.params.protocol, paper_protocol)
        params = proto.specialise(self.params, chosen, set(self.explicit), dataset, model.name,
                                  model.params_dict())
        P.validate(params, proto.NAMESPACE)
        devs = proto.deviations(chosen, params, dataset, model.name, model.params_dict())
        return proto.Protocol(params, self.preset, chosen.stored_name, chosen.version, proto.overrides(devs))


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
                   for kind in PARAM_KINDS for e in self.registry.entries(kind))

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

    def protocols(self) -> list[ProtocolChoice]:
        """The evaluation protocol's variants (one unless swept), each with the parameters
        a preset or ``--set`` gave (a named protocol's own values never override those)."""
        presets = proto.PRESETS[self.preset]
        explicit = set(presets) | {key for ns, key in self.sets if ns == proto.NAMESPACE}
        named = {e.name: e.cls for e in self.registry.entries("protocols")}
        choices = [ProtocolChoice(params, swept, frozenset(explicit), self.preset, named)
                   for params, swept in self._combos(proto.NAMESPACE, proto.ProtocolParams, presets)]
        for c in choices:  # a misspelled protocol fails here, before any cell is planned
            proto.choose(named, c.params.protocol, None)
        return choices

    def check_unused(self) -> list[str]:
        """``--set`` for components outside this run: checked, then warned about.

        An unknown name is an error; a registered component that the run does not use
        gets its parameters validated and a warning (sweep scripts often share --set).
        """
        warnings = []
        for ns in sorted({ns for ns, _ in self.sets} - self.used):
            entries = [e for kind in PARAM_KINDS for e in self.registry.entries(kind) if e.name == ns]
            if not entries:
                valid = namespaces(self.registry)
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
