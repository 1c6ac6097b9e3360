"""ddbench: a benchmark harness for dataset distillation.

Plugin authors need only what is exported here: ``hookimpl`` to mark hook
implementations and the component base classes they register.
"""

from __future__ import annotations

from ddbench.components import (
    Component,
    DatasetSpec,
    Distiller,
    Executor,
    MIEstimator,
    Model,
    Objective,
    ProtocolSpec,
    Tracker,
)
from ddbench.context import DistillContext
from ddbench.data.bundle import DataBundle
from ddbench.hookspecs import hookimpl
from ddbench.synthetic import SyntheticSet
from ddbench.version import __version__

__all__ = [
    "hookimpl",
    "Component",
    "DataBundle",
    "DatasetSpec",
    "Distiller",
    "DistillContext",
    "Executor",
    "MIEstimator",
    "Model",
    "Objective",
    "ProtocolSpec",
    "SyntheticSet",
    "Tracker",
    "__version__",
]


# --------------------------------------------------------------------------- moved modules
# ddbench 0.1 kept its modules side by side (``ddbench.augment``, ``ddbench.records``,
# ``ddbench.distillers.random``, ...). They now live in packages by concept; a plugin written
# against the old layout keeps importing them under the old names, with a DeprecationWarning.

import importlib as _importlib  # noqa: E402
import importlib.abc as _abc  # noqa: E402
import importlib.util as _util  # noqa: E402
import sys as _sys  # noqa: E402
import warnings as _warnings  # noqa: E402

_PACKAGES = {"distillers": "builtins.distillers", "objectives": "builtins.objectives",
             "models": "builtins.models", "trackers": "builtins.trackers", "executors": "builtins.executors"}
_MODULES = {
    "compiling": "runtime.compiling", "precision": "runtime.precision", "allocator": "runtime.allocator",
    "cost": "runtime.cost", "progress": "runtime.progress", "external": "data.released",
    "conditions": "data.conditions", "protocol": "evaluation.protocol", "batched_eval": "evaluation.batched",
    "labels": "evaluation.labels", "teacher": "evaluation.teacher", "experts": "evaluation.experts",
    "augment": "evaluation.augment", "dc_augment": "evaluation.dc_augment", "protocols": "builtins.protocols",
    "results": "analysis.results", "stats": "analysis.stats", "scores": "analysis.scores",
    "report": "analysis.report", "plots": "analysis.plots", "cost_table": "analysis.cost_table",
    "check": "analysis.check", "baselines": "analysis.baselines", "store": "storage.store",
    "records": "storage.records", "artifacts": "storage.artifacts", "checkpoint": "storage.checkpoint",
    "share": "storage.share", "mi": "builtins.mi_estimators", "config": "plan.config",
    "executors.tasks": "execution.tasks", "executors.worker": "runtime.worker",
    "data.builtin": "builtins.datasets.plugin", "data.mnist": "builtins.datasets.mnist",
    "data.cifar": "builtins.datasets.cifar", "data.svhn": "builtins.datasets.svhn",
    "data.digits": "builtins.datasets.digits", "data.imagefolder": "builtins.datasets.imagefolder",
}


def _moved(name: str) -> str | None:
    """The module that ``ddbench.<old>`` became, or None."""
    old = name[len("ddbench."):] if name.startswith("ddbench.") else None
    if old is None:
        return None
    if old in _MODULES or old in _PACKAGES:
        return "ddbench." + _MODULES.get(old, _PACKAGES.get(old, ""))
    head, _, rest = old.partition(".")
    return f"ddbench.{_PACKAGES[head]}.{rest}" if head in _PACKAGES and rest else None


class _MovedModules(_abc.MetaPathFinder, _abc.Loader):
    """Serves an old module name as a module holding the new module's names."""

    def find_spec(self, name, path=None, target=None):
        new = _moved(name)
        if new is None or _util.find_spec(new) is None:
            return None
        return _util.spec_from_loader(name, self, is_package=name[len("ddbench."):] in _PACKAGES)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        new = _moved(module.__name__)
        _warnings.warn(f"{module.__name__} moved to {new}; import it from there", DeprecationWarning,
                       stacklevel=2)
        target = _importlib.import_module(new)
        module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})


_sys.meta_path.append(_MovedModules())
