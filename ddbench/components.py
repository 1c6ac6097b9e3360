"""Base classes of every component kind, and the objects that pass between them.

A component is a class with a unique ``name``, an optional ``Params`` dataclass and
optional ``presets`` (preset name -> parameter defaults). The registry instantiates it
with resolved parameters; the core never refers to a component by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ddbench.synthetic import SyntheticSet

if TYPE_CHECKING:
    from torch import nn

    from ddbench.data.bundle import DataBundle
    from ddbench.evaluation.experts import ExpertBuffer, ExpertRecipe
    from ddbench.storage.checkpoint import Checkpointer


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

@dataclass
class StepContext:
    """What a distiller exposes to its objectives at one outer step.

    ``features(x)`` maps images to the per-layer features of the network the distiller
    uses at this step (a list, shallow to deep); the synthetic images carry gradients.
    """

    features: Callable[[torch.Tensor], list[torch.Tensor]]
    syn_images: torch.Tensor
    syn_labels: torch.Tensor
    real_images: torch.Tensor
    real_labels: torch.Tensor
    step: int
    num_classes: int
    #: features of the real images when they come from another network than the synthetic
    #: ones (MTT: the expert at the target epoch); None = ``features``
    real_features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None


@dataclass
class DistillContext:
    """Everything a distiller gets: data, budget, seed, device, objectives and helpers."""

    data: DataBundle
    ipc: int
    seed: int
    device: torch.device
    objectives: list[Objective]
    build_model: Callable[..., nn.Module]
    progress: Callable[[int, int], None] = lambda step, total: None
    #: the expert trajectories the distiller asked for with ``expert_recipe`` (built)
    experts: ExpertBuffer | None = None
    #: ``(kind, name) -> instance`` of a component named by a ``references`` parameter
    component: Callable[[str, str], Component] | None = None
    #: scalar series recorded during distillation (stored with the set): name -> [(step, value)]
    trace: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    #: this distillation's checkpoint file (``ddbench.storage.checkpoint``); None = not resumable
    checkpointer: Checkpointer | None = None
    _objective_gen: torch.Generator | None = field(default=None, repr=False)

    #: salt of the stream ``objective_batch`` draws from
    OBJECTIVE_SALT: ClassVar[int] = 7_007

    def objective_batch(self, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real images (``per_class`` of every class) for the objectives, from a stream of
        their own: attaching an objective never changes what the distiller itself draws."""
        from ddbench.data.sampling import sample_per_class

        if self._objective_gen is None:
            self._objective_gen = self.generator(self.OBJECTIVE_SALT)
        x, y = sample_per_class(self.data, per_class, self._objective_gen)
        return x.to(self.device), y.to(self.device)

    def class_ipcs(self) -> list[int]:
        """Synthetic images of each class: ``ipc``, capped by the class's training images.

        Only the ``imbalance`` condition lets a class be smaller than ``ipc`` (the runner
        rejects such an IPC otherwise): that class then gets all its real images (``random``,
        real init) or as many noise images, so every method has the same per-class budget."""
        return [min(self.ipc, n) for n in self.data.class_counts()]

    def record(self, name: str, step: int, value: float) -> None:
        """Record a scalar of this distillation (e.g. the MI estimate) at ``step``."""
        self.trace.setdefault(name, []).append((int(step), float(value)))

    def generator(self, salt: int = 0) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + salt) % (2**63))
        return g

    def first_order(self, net: nn.Module | Callable):
        """``net`` (a module or a function of tensors) for passes differentiated at most once,
        compiled where this process compiles (``ddbench.runtime.compiling``); it shares ``net``'s
        parameters; never ``create_graph`` through it."""
        from ddbench.runtime.compiling import first_order

        return first_order(net, self.device, self.data.image_size)

    def image_optimizer(self, images: torch.Tensor, lr: float, momentum: float) -> torch.optim.SGD:
        """SGD on the synthetic images (objectives train their own parameters themselves)."""
        return torch.optim.SGD([images], lr=lr, momentum=momentum)

    def objectives_loss(self, step: StepContext) -> torch.Tensor | float:
        """Weighted sum of the attached objectives' losses at this step (0 when none); records
        each objective's ``scalars()`` as ``<objective>/<name>`` in the trace."""
        total: torch.Tensor | float = 0.0
        for obj in self.objectives:
            total = total + obj.weight() * obj.loss(step)
            for key, value in obj.scalars().items():
                self.record(f"{obj.name}/{key}", step.step, value)
        return total

    def checkpoint(self, step: int, state: dict[str, Any]) -> bool:
        """Call at the end of every outer iteration, ``step`` iterations done: saves ``state``
        (tensors, optimizers, generators, modules, JSON data) with what the context owns
        (trace, objective stream, global RNG, objectives' ``state_dict``) when a checkpoint
        is due. Returns whether it saved."""
        ck = self.checkpointer
        if ck is None or not ck.due(step):
            return False
        ck.save(step, {"distiller": state, "context": self._own_state()})
        return True

    def resume(self, state: dict[str, Any]) -> int:
        """Call once, after building what ``state`` holds and just before the loop: loads a
        checkpoint into it in place (tensors copied into, optimizers, modules and generators
        loaded, plain entries replaced in the dict) and restores what the context owns.
        Returns the iterations already done (0 when there is no checkpoint)."""
        ck = self.checkpointer
        saved = ck.load() if ck is not None else None
        if saved is None:
            return 0
        from ddbench.storage.checkpoint import restore

        restore(state, saved.state["distiller"], "the distiller")
        self._restore_own(saved.state["context"])
        return saved.step

    def _own_state(self) -> dict[str, Any]:
        own = {
            # steps and values as tensors: exact, and compact for 20,000-iteration traces
            "trace": {name: (torch.tensor([s for s, _ in pts], dtype=torch.long),
                             torch.tensor([v for _, v in pts], dtype=torch.float64))
                      for name, pts in self.trace.items()},
            "objective_gen": self._objective_gen,
            "rng": torch.get_rng_state(),  # DM and DC draw their networks from it
            "objectives": [[obj.name, obj.state_dict()] for obj in self.objectives],
        }
        if self.device.type == "cuda":
            own["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return own

    def _restore_own(self, own: dict[str, Any]) -> None:
        from ddbench.errors import DDBenchError

        names = [name for name, _ in own["objectives"]]
        if names != [obj.name for obj in self.objectives]:
            raise DDBenchError(f"checkpoint has objectives {names}, the method {[o.name for o in self.objectives]}")
        self.trace.clear()
        for name, (steps, values) in own["trace"].items():
            self.trace[name] = list(zip(steps.tolist(), values.tolist(), strict=True))
        self._objective_gen = None
        if own["objective_gen"] is not None:
            self._objective_gen = self.generator(self.OBJECTIVE_SALT)
            self._objective_gen.set_state(own["objective_gen"])
        torch.set_rng_state(own["rng"])
        if self.device.type == "cuda" and own.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(own["cuda_rng"], self.device)
        for obj, (_, state) in zip(self.objectives, own["objectives"], strict=True):
            obj.load_state_dict(state)

    @staticmethod
    def check_finite(loss: torch.Tensor, step: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at iteration {step}")


class Distiller(Component):
    """Base class: turn a DataBundle into a SyntheticSet of ``ipc`` images per class."""

    kind = "distillers"
    #: False for methods whose output does not depend on IPC (``full``): the plan
    #: then runs them once per dataset and shows IPC as "all".
    uses_ipc: ClassVar[bool] = True
    #: False when the output is not worth storing (``full`` returns the training split)
    save_artifact: ClassVar[bool] = True
    #: the named evaluation protocol of the method's paper (``ddbench.builtins.protocols``: "dc",
    #: "dsa", "dm", "mtt"), used under ``--set eval.protocol=method`` (the ``paper``
    #: preset); None = ddbench's uniform protocol
    paper_protocol: ClassVar[str | None] = None

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
