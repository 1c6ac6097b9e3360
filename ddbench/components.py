"""Base classes of every component kind, and the objects that pass between them.

A component is a class with a unique ``name``, an optional ``Params`` dataclass and
optional ``presets`` (preset name -> parameter defaults). The registry instantiates it
with resolved parameters; the core never refers to a component by name.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ddbench.context import DistillContext, StepContext
from ddbench.hookspecs import hookimpl
from ddbench.synthetic import SyntheticSet

if TYPE_CHECKING:
    from torch import nn

    from ddbench.data.bundle import DataBundle
    from ddbench.evaluation.experts import ExpertRecipe


class Component:
    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Params: ClassVar[type | None] = None
    #: preset name -> {param: value}; applied over the Params defaults, under --set
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: parameter -> component kind it names (e.g. ``{"estimator": "mi_estimators"}``): the
    #: plan checks the name, resolves that component's parameters (``--set NAME.P=V``) and
    #: keys the result on them; ``DistillContext.component`` builds it. (A ``model``
    #: parameter names a model by convention.)
    references: ClassVar[dict[str, str]] = {}
    #: parameters added after results were stored -> the value that reproduces the earlier
    #: behaviour: at that value they are left out of result keys and stored parameters, so
    #: that stored results still match (e.g. ``{"amp": "off"}``)
    late_params: ClassVar[dict[str, Any]] = {}
    #: parameters that say where an input is rather than what it is (a file's path, keyed
    #: by its content hash instead): stored and shown, never part of a result key
    locators: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params=None):
        self.params = params

    @classmethod
    def preset_values(cls, preset: str, dataset: str | None, ipc: int | None) -> dict[str, Any]:
        """Parameter defaults of ``preset`` for a setting; override for per-dataset/IPC tables."""
        return cls.presets.get(preset, {})

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


# --------------------------------------------------------------------------- distillers


class Distiller(Component):
    """Base class: turn a DataBundle into a SyntheticSet of ``ipc`` images per class."""

    kind = "distillers"
    #: False for methods whose output does not depend on IPC (``full``): the plan
    #: then runs them once per dataset and shows IPC as "all".
    uses_ipc: ClassVar[bool] = True
    #: False when the output is not worth storing (``full`` returns the training split)
    save_artifact: ClassVar[bool] = True
    #: the registered evaluation protocol of the method's paper (a ``ProtocolSpec`` name:
    #: the built-ins "dc", "dsa", "dm", "mtt", or a plugin's own), used under
    #: ``--set eval.protocol=method`` (the ``paper`` preset); None = the uniform protocol
    paper_protocol: ClassVar[str | None] = None
    #: True when the sets carry a learned evaluation lr (MTT), which replaces ``eval.lr``:
    #: planning then says so beside an explicit ``--set eval.lr``
    learns_lr: ClassVar[bool] = False

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        raise NotImplementedError(f"{type(self).__name__}.distill")

    #: the parameter a ``name:ARG`` method spec sets (``file:PATH``); None = takes no argument
    argument: ClassVar[str | None] = None

    @classmethod
    def with_argument(cls, resolved, arg: str, spec: str):
        """``resolved`` (a ``ddbench.plan.Resolved``) with the spec's argument applied; a
        distiller with an ``argument`` overrides it (e.g. to add a content hash)."""
        import dataclasses

        return dataclasses.replace(resolved, params=dataclasses.replace(resolved.params, **{cls.argument: arg}),
                                   spec=spec)

    @classmethod
    def own_ipc(cls, arg: str) -> int | None:
        """The IPC a ``name:ARG`` method is planned at instead of ``--ipc`` (a file's own);
        None = ``--ipc``."""
        return None

    def gives_soft_labels(self) -> bool:
        """Whether the sets it returns carry soft labels (``SyntheticSet.soft_labels``): then
        ``eval.labels=soft`` trains on them and plans no teacher for this method."""
        return False

    def expert_recipe(self, data: DataBundle, models: dict[str, dict[str, Any]]) -> ExpertRecipe | None:
        """Expert trajectories this distiller needs (MTT), given the parameters of the models
        it builds; the runner builds or loads them (cached, shared by every method with the
        same recipe) into ``ctx.experts``. Raise ``DDBenchError`` for inconsistent params."""
        return None


class Objective(Component):
    """Base class: an auxiliary loss added to a distiller's loss (``base+name``)."""

    kind = "objectives"

    def setup(self, ctx: DistillContext) -> None:
        """Called once before distillation (seeded generators, referenced components).

        An objective with trainable parameters of its own (MIM's heads) owns their
        optimizer: gradients reach them through the distiller's ``loss.backward()``."""

    def weight(self) -> float:
        return float(getattr(self.params, "weight", 1.0)) if self.params is not None else 1.0

    def loss(self, step: StepContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}.loss")

    def scalars(self) -> dict[str, float]:
        """Values to record from the latest ``loss`` call (e.g. the MI estimate)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed distillation needs to continue exactly (trained heads, their
        optimizer, pending gradients), saved with every checkpoint: tensors, optimizers,
        generators, modules, JSON data (``ddbench.storage.checkpoint.pack``; never pickled)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` on resume (after ``setup``, before the first ``loss``):
        optimizers and modules come back as their state dicts, generators as their state."""


class MIEstimator(Component):
    """Base class: a lower bound on mutual information (nats) from critic scores."""

    kind = "mi_estimators"

    def estimate(self, scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """``scores[i, j]`` critic value of anchor i with candidate j; ``positive`` a bool mask."""
        raise NotImplementedError(f"{type(self).__name__}.estimate")

    def ceiling(self, positive: torch.Tensor) -> float | None:
        """The largest value the estimator can return for this mask (InfoNCE: log K), or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Running statistics (MINE's moving average), saved by the objective using it."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` when a distillation resumes."""


class Model(Component):
    """Base class: builds a network exposing ``features(x)`` (per block) and ``embed(x)``."""

    kind = "models"
    #: the parameter that ``name:ARG`` sets, for models named with an argument
    #: (``timm:resnet50`` sets ``arch``); None = the model takes no argument
    argument: ClassVar[str | None] = None

    def build(self, channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__}.build")


class DatasetSpec(Component):
    """Base class: loads a dataset into a DataBundle (train/test tensors, classes, stats)."""

    kind = "datasets"
    #: True for datasets named with an argument, e.g. ``imagefolder:PATH``
    takes_argument: ClassVar[bool] = False

    def load(self, arg: str | None, root, download: bool) -> DataBundle:
        raise NotImplementedError(f"{type(self).__name__}.load")


@dataclass
class WorkerLost:
    """What ``Executor.map`` yields for an item whose worker died (process killed, node lost,
    job cancelled) before finishing it: the driver records the item's unfinished cells as
    failed with ``reason``, so that the next run retries them."""

    reason: str


class Executor(Component):
    """Base class: runs independent tasks; only the driver writes results.

    The driver calls ``check()`` while validating (before anything is written: raise
    ``DDBenchError`` for a missing optional package), ``start(device, workdir)`` once,
    ``map(fn, items)``, then ``close()`` (also after an interruption: cancel what runs).
    ``fn(item)`` is a picklable module-level generator function; ``map`` yields
    ``(item, value)`` for every value it yields, ``item`` being the driver's own object,
    in any order across items but in order within one, and ``(item, WorkerLost(reason))``
    when the worker running ``item`` died. Workers never touch the store.
    """

    kind = "executors"
    #: True when ``fn`` runs in the driver process (it may then report progress itself)
    in_process: ClassVar[bool] = False

    def check(self) -> None:
        """Fail early (``DDBenchError``) when the executor cannot run, e.g. a missing extra."""

    def start(self, device: torch.device, workdir: Path) -> None:
        """Connect to the engine. ``device`` is the run's device; ``workdir`` the store's
        folder, where the executor may create a subfolder of its own."""

    def map(self, fn: Callable[[Any], Iterable[Any]], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError(f"{type(self).__name__}.map")

    def close(self) -> None:
        """Stop workers and release the engine (called once, also after an error)."""


# --------------------------------------------------------------------------- protocols


class ProtocolSpec(Component):
    """Base class: a named evaluation protocol (``--set eval.protocol=NAME``, a distiller's
    ``paper_protocol``): the values it sets over ``ProtocolParams``' defaults, stored with
    every result as ``stored_name/vVERSION``. Bump ``version`` when its values change."""

    kind = "protocols"
    stored_name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    values: ClassVar[dict[str, Any]] = {}
    #: a paper's protocol, whose numbers ``ddbench check`` compares with results at its own
    #: values only: run with others, it is stored starred (``dsa-eval/v1*``). False for a
    #: protocol with no published recipe to depart from (ddbench's ``uniform``)
    published: ClassVar[bool] = True

    @classmethod
    def adjust(cls, params, explicit: set[str], dataset: str, model: str, model_params: dict):
        """``params`` (its values applied) after the protocol's own dataset/model rules;
        ``explicit``: what a preset or ``--set`` gave, which a rule must not override."""
        return params


# --------------------------------------------------------------------------- trackers


@dataclass
class TrackerParams:
    #: the folder the tracker's local files go to (the results store's)
    folder: str = "."
    #: the tracking server (``--track-uri``); empty = the tracker's own default
    uri: str = ""


class Tracker(Component):
    """Base class: an experiment tracker (``--track NAME``) fed by the run hooks, each
    guarded: its first exception is one warning line and turns it off for the rest of the
    run (its run closed as failed, if it can be); results are in the store already.

    A subclass defines ``start(run, config)``, ``log_cell(record)``, ``log_synset(record,
    grid, trace)``, ``finish(run, ran, skipped, failed)`` and ``abandon()``."""

    kind = "trackers"
    Params = TrackerParams
    #: whether ``--track-uri`` means anything to it
    takes_uri: ClassVar[bool] = False
    #: its name for people ("MLflow"); empty = ``name``
    title: ClassVar[str] = ""

    def __init__(self, params=None):
        super().__init__(params or TrackerParams())
        self.enabled = True

    @classmethod
    def check_uri(cls, uri: str) -> None:
        """Refuse a ``--track-uri`` this tracker cannot use (``DDBenchError``), before any work."""

    @hookimpl
    def run_started(self, run, config):
        self._guard(self.start, run, config)

    @hookimpl
    def cell_finished(self, record):
        self._guard(self.log_cell, record)

    @hookimpl
    def synset_stored(self, record, artifact, grid, trace):
        self._guard(self.log_synset, record, grid, trace)

    @hookimpl
    def run_finished(self, run, ran, skipped, failed):
        self._guard(self.finish, run, ran, skipped, failed)

    def _guard(self, method, *args) -> None:
        if not self.enabled:
            return
        try:
            method(*args)
        except Exception as exc:  # a tracker never stops the run: results are already stored
            self.enabled = False
            first = (str(exc).strip().splitlines() or [""])[0]
            error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            print(f"ddbench: warning: tracker {self.name}: {error} "
                  "(tracking stopped for this run; results are stored)", file=sys.stderr)
            with contextlib.suppress(Exception):
                self.abandon()
