"""What a distiller is handed: ``DistillContext`` (data, budget, seed, device, objectives
and helpers) and, per outer step, the ``StepContext`` its objectives see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from torch import nn

    from ddbench.data.bundle import DataBundle
    from ddbench.evaluation.experts import ExpertBuffer
    from ddbench.storage.checkpoint import Checkpointer


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
    #: the attached objectives (``ddbench.Objective`` instances)
    objectives: list
    build_model: Callable[..., nn.Module]
    progress: Callable[[int, int], None] = lambda step, total: None
    #: the expert trajectories the distiller asked for with ``expert_recipe`` (built)
    experts: ExpertBuffer | None = None
    #: ``(kind, name) -> instance`` of a component named by a ``references`` parameter
    component: Callable[[str, str], Any] | None = None
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

    def resume(self, state: dict[str, Any], iterations: int | None = None) -> int:
        """Call once, after building what ``state`` holds and just before the loop: loads a
        checkpoint into it in place (tensors copied into, optimizers, modules and generators
        loaded, plain entries replaced in the dict) and restores what the context owns.
        Returns the iterations already done (0 when there is no checkpoint).

        The checkpoint must fit what was just built (``checkpoint.check_fits``) and its step
        lie in ``0..iterations`` (default: the distiller's ``iterations`` parameter). One
        that does not is set aside with a warning and 0 returned: the distillation starts
        over from the untouched fresh state, never from a foreign or damaged one."""
        ck = self.checkpointer
        if ck is None:
            return 0
        import sys

        from ddbench.errors import DDBenchError
        from ddbench.storage.checkpoint import check_fits, restore

        try:
            saved = ck.load(iterations)
            if saved is None:
                return 0
            if not isinstance(saved.state, dict) or set(saved.state) != {"distiller", "context"}:
                raise DDBenchError(f"{ck.path} holds no distiller and context state")
            check_fits(state, saved.state["distiller"], "the distiller's state")
            self._check_own(saved.state["context"])
        except DDBenchError as exc:
            why = (str(exc).strip().splitlines() or ["unreadable"])[0].removeprefix(f"{ck.path} ")
            moved = ck.set_aside()
            print(f"ddbench: warning: checkpoint {ck.path} set aside as {moved.name} ({why}); "
                  f"distilling from the start", file=sys.stderr)
            return 0
        restore(state, saved.state["distiller"], "the distiller")
        self._restore_own(saved.state["context"])
        ck.adopt(saved)
        budget = ck.iterations if iterations is None else iterations
        if budget is not None:  # a resumed run reports where it stands (a set resumed at its end too)
            self.progress(saved.step, budget)
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

    def _check_own(self, own: Any) -> None:
        """``DDBenchError`` unless ``own`` (a checkpoint's context part) fits this context:
        the same objectives, trace series of matching steps and values, generator states of
        the right size. An objective's state is checked against its ``state_dict()`` now
        when it has one (MIM builds its heads at the first loss and checks them then)."""
        from ddbench.errors import DDBenchError
        from ddbench.storage.checkpoint import check_fits

        want = {"trace", "objective_gen", "rng", "objectives"}
        if not isinstance(own, dict) or not want <= set(own) <= want | {"cuda_rng"}:
            raise DDBenchError(f"the context's state holds {sorted(map(str, own)) if isinstance(own, dict) else type(own).__name__}, "
                               f"expected {sorted(want)}")
        check_fits(torch.get_rng_state(), own["rng"], "the global RNG state")
        if self.device.type == "cuda" and own.get("cuda_rng") is not None:
            check_fits(torch.cuda.get_rng_state(self.device), own["cuda_rng"], "the CUDA RNG state")
        if own["objective_gen"] is not None:
            check_fits(torch.Generator(), own["objective_gen"], "the objectives' stream")
        trace = own["trace"]
        if not isinstance(trace, dict):
            raise DDBenchError(f"the trace is a {type(trace).__name__}, expected a dict")
        for name, series in trace.items():
            if not isinstance(name, str) or not isinstance(series, tuple) or len(series) != 2:
                raise DDBenchError(f"trace {name!r} is not a named pair of (steps, values)")
            n = len(series[0]) if isinstance(series[0], torch.Tensor) and series[0].dim() == 1 else 0
            check_fits((torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.float64)), series,
                       f"trace {name!r}")
        held, expected = own["objectives"], [obj.name for obj in self.objectives]
        pairs = isinstance(held, list) and all(isinstance(e, list) and len(e) == 2 for e in held)
        names = [name for name, _ in held] if pairs else type(held).__name__
        if names != expected:
            raise DDBenchError(f"the checkpoint has objectives {names!r}, the method {expected}")
        for obj, (name, saved) in zip(self.objectives, held, strict=True):
            if not isinstance(saved, dict):
                raise DDBenchError(f"objective {name}'s state is a {type(saved).__name__}, expected a dict")
            live = obj.state_dict()
            if live:
                check_fits(live, saved, f"objective {name}'s state")

    def _restore_own(self, own: dict[str, Any]) -> None:
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
