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
