"""The plugin registry: one pluggy PluginManager, built-ins and entry points alike.

Built-in modules are registered as ordinary plugins; third parties declare an entry
point in the ``ddbench`` group. ``DDBENCH_PLUGINS`` (comma-separated entry-point names,
empty for none) restricts which installed plugins load, so a test suite never sees the
developer's plugins; ``DDBENCH_TRACE_HOOKS=1`` prints every hook call. A plugin that
fails to import is recorded and reported; the rest keep working. Two components with
one name are an error naming both origins.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from ddbench import hookspecs
from ddbench import params as P
from ddbench.errors import DDBenchError, choices_error
from ddbench.version import __version__

KINDS = ("distillers", "objectives", "mi_estimators", "models", "datasets", "executors", "protocols",
         "trackers")
#: kinds whose components take ``--set NAME.PARAM=V`` (protocols are set through ``eval``;
#: trackers through ``--track`` and ``--track-uri``)
PARAM_KINDS = tuple(k for k in KINDS if k not in ("protocols", "trackers"))

#: kind -> singular noun for messages
NOUN = {
    "distillers": "distiller",
    "objectives": "objective",
    "mi_estimators": "MI estimator",
    "models": "model",
    "datasets": "dataset",
    "executors": "executor",
    "protocols": "evaluation protocol",
    "trackers": "tracker",
}

BUILTIN_PLUGINS = (
    "ddbench.builtins.distillers.random",
    "ddbench.builtins.distillers.full",
    "ddbench.builtins.distillers.dm",
    "ddbench.builtins.distillers.gradient_matching",
    "ddbench.builtins.distillers.mtt",
    "ddbench.builtins.distillers.mim",
    "ddbench.builtins.distillers.file",
    "ddbench.builtins.objectives.mim",
    "ddbench.builtins.mi_estimators",
    "ddbench.builtins.models.convnet",
    "ddbench.builtins.models.timm_models",
    "ddbench.builtins.models.classic",
    "ddbench.builtins.datasets.plugin",
    "ddbench.builtins.executors.local",
    "ddbench.builtins.executors.ray",
    "ddbench.builtins.executors.slurm",
    "ddbench.builtins.protocols",
    "ddbench.builtins.trackers.mlflow",
    "ddbench.builtins.trackers.wandb",
)

ENTRY_POINT_GROUP = "ddbench"
PLUGINS_ENV = "DDBENCH_PLUGINS"
#: set to 1 to print every hook call and its result (for plugin authors)
TRACE_ENV = "DDBENCH_TRACE_HOOKS"


@dataclass(frozen=True)
class Origin:
    module: str
    package: str
    version: str

    def __str__(self) -> str:
        return f"{self.module} ({self.package} {self.version})"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    cls: type
    origin: Origin


@dataclass(frozen=True)
class PluginFailure:
    name: str
    package: str
    error: str


class Registry:
    """Components by kind and name, with their origins; built from a PluginManager."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        failures: list[PluginFailure],
        dists: dict[str, tuple[str, str]],
    ):
        self.pm = pm
        self.failures = failures
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        # the register hooks are called one implementation at a time to know each
        # component's origin; the tracer (DDBENCH_TRACE_HOOKS) still sees every call
        trace = pm.trace.root.get("hook")
        for kind in KINDS:
            hook = getattr(pm.hook, f"register_{kind}")
            for impl in hook.get_hookimpls():
                trace(f"register_{kind} [{impl.plugin_name}]")
                origin = _origin(impl.plugin_name, impl.plugin, dists)

                def register(cls, _kind=kind, _origin=origin):
                    self._add(_kind, cls, _origin)

                impl.function(register=register)

    def _add(self, kind: str, cls: type, origin: Origin) -> None:
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise DDBenchError(f"{NOUN[kind]} class {cls!r} from {origin} has no name")
        if getattr(cls, "kind", kind) != kind:
            raise DDBenchError(
                f"{cls.__name__} from {origin} is a {cls.kind} component registered as {kind}"
            )
        if name in self._entries[kind]:
            first = self._entries[kind][name].origin
            raise DDBenchError(
                f"{NOUN[kind]} {name!r} is registered twice: by {first} and by {origin}"
            )
        self._entries[kind][name] = Entry(kind, name, cls, origin)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def late_params(self) -> dict[str, dict]:
        """component name -> its ``late_params`` (distillers and objectives): what reports
        need to label stored variants (``ddbench.analysis.results.group``)."""
        return {e.name: dict(getattr(e.cls, "late_params", {}))
                for kind in ("distillers", "objectives") for e in self.entries(kind)}

    def protocol_specs(self) -> dict[str, type]:
        """stored name (``dsa-eval``) -> registered ``ProtocolSpec`` class: what reports judge
        a stored protocol against (``ddbench.analysis.protocols``)."""
        return {e.cls.stored_name: e.cls for e in self.entries("protocols")}

    def create(self, kind: str, name: str, **params):
        """An instance of the ``kind`` component ``name`` with ``params`` over its declared
        defaults, checked as ``--set`` values are (for notebooks, ``bench`` and ``list``):
        ``load_registry().create("models", "convnet", width=64)``."""
        entry = self.get(kind, name)
        return entry.cls(P.build(entry.cls.Params, params, name))

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self._entries[kind][name]
        except KeyError:
            raise choices_error(NOUN[kind], name, self._entries[kind]) from None


def _origin(plugin_name: str, plugin, dists: dict[str, tuple[str, str]]) -> Origin:
    module = getattr(plugin, "__name__", type(plugin).__module__)
    if plugin_name in dists:
        return Origin(module, *dists[plugin_name])
    if module == "ddbench" or module.startswith("ddbench."):
        return Origin(module, "ddbench", __version__)
    return Origin(module, "(registered in-process)", "-")


def _wanted_entry_points():
    allowed = os.environ.get(PLUGINS_ENV)
    allow = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allow is None or ep.name in allow:
            yield ep


def plugin_manager(extra_plugins=()):
    """Build the PluginManager: built-ins, then allowed entry points, then ``extra_plugins``.

    Returns (pm, failures, dists) where ``dists`` maps a plugin's name to its
    distribution (package, version).
    """
    pm = pluggy.PluginManager("ddbench")
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    failures: list[PluginFailure] = []
    dists: dict[str, tuple[str, str]] = {}
    for ep in _wanted_entry_points():
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = getattr(ep, "dist", None)
        package = (dist.metadata["name"], dist.version) if dist is not None else ("?", "?")
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # any failure of third-party code: report, keep going
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            failures.append(PluginFailure(ep.name, " ".join(package), last))
            continue
        dists[ep.name] = package
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()  # a misspelled hook name fails loudly instead of doing nothing
    except pluggy.PluginValidationError as exc:
        raise DDBenchError(f"plugin {exc.plugin!r}: {exc}") from None
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(lambda line: sys.stderr.write(line))
        pm.enable_tracing()
    return pm, failures, dists


def load_registry(extra_plugins=()) -> Registry:
    return Registry(*plugin_manager(extra_plugins))
