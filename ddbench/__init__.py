"""ddbench: a benchmark harness for dataset distillation.

Plugin authors need only what is exported here: ``hookimpl`` to mark hook
implementations and the component base classes they register.
"""

from __future__ import annotations

import pluggy

from ddbench.version import __version__

hookimpl = pluggy.HookimplMarker("ddbench")

from ddbench.components import (  # noqa: E402
    Component,
    DatasetSpec,
    DistillContext,
    Distiller,
    Executor,
    MIEstimator,
    Model,
    Objective,
    SyntheticSet,
)
from ddbench.data.bundle import DataBundle  # noqa: E402

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
    "SyntheticSet",
    "__version__",
]
