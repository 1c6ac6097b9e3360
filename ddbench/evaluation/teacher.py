"""Teachers for soft- and teacher-label evaluation: a network trained on the full real
training split, trained once and cached like the expert trajectories.

SRe2L and RDED relabel every augmented training batch with a network trained on the real
data; DD-Ranking does the same (mode "M") and labels random subsets with it (mode "S").
A teacher is identified by the dataset (spec, parameters, condition, content hash), the
model and its parameters, and the training recipe; every run and method with the same
identity shares one file: ``<data root>/.ddbench-cache/teachers/<name>-<key>.safetensors``
(the weights, the identity as metadata; written atomically, read without unpickling).

Training follows the evaluation protocol's recipe on the real split: SGD momentum 0.9,
weight decay 5e-4, batch 256, lr 0.01 decayed x0.1 after half the epochs, per-sample DSA
with the dataset's strategy.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddbench.data.bundle import DataBundle
from ddbench.data.cache import cache_dir
from ddbench.evaluation.training import Recipe, dsa, fit
from ddbench.keys import digest
from ddbench.storage.atomic import write_atomic

#: bump when a change to the training code below changes the teachers
FORMAT_VERSION = 1
SUBDIR = "teachers"


@dataclass(frozen=True)
class TeacherRecipe:
    model: str
    model_params: str  # JSON of the model's parameters
    epochs: int
    dsa_strategy: str | None  # resolved; None = no augmentation
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 256
    seed: int = 0


class Teacher:
    """One cached teacher: whether it exists, train it, load it."""

    def __init__(self, root: Path, dataset_key: dict[str, Any], recipe: TeacherRecipe, model=None):
        self.recipe = recipe
        #: the model's resolved component (``ddbench.plan.Resolved``), to build the network
        self.model = model
        self.identity = {"format": FORMAT_VERSION, "dataset": dataset_key, "recipe": dataclasses.asdict(recipe)}
        self.key = digest(self.identity, 16)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(dataset_key.get("dataset", "data")))[:30].strip("_.") or "data"
        self.path = cache_dir(root) / SUBDIR / f"{name}-{recipe.model}-{self.key}.safetensors"

    @property
    def label(self) -> str:
        return f"{self.recipe.model} ({self.recipe.epochs} epochs)"

    def present(self) -> bool:
        return _identity(self.path) == self.identity

    def network(self, data: DataBundle) -> torch.nn.Module:
        return self.model.instance().build(data.channels, data.num_classes, data.image_size)

    def build(self, data: DataBundle, device: torch.device,
              progress: Callable[[int, int], None] = lambda step, total: None) -> bool:
        """Train and store the teacher unless present; returns whether it trained."""
        if self.present():
            return False
        r = self.recipe
        gen = torch.Generator()
        gen.manual_seed(int(self.key[:12], 16) + r.seed)
        torch.manual_seed(int(self.key[:12], 16) + r.seed)
        net = self.network(data).to(device)
        x, y = data.x_train.to(device), data.y_train.to(device)

        def after_pass(i: int, loss: torch.Tensor) -> None:
            if not torch.isfinite(loss):
                raise FloatingPointError(f"teacher {self.label} diverged (loss {float(loss)})")
            progress(i + 1, r.epochs)

        # the lr x0.1 after half the epochs
        recipe = Recipe(r.epochs, r.lr, r.momentum, r.weight_decay, r.batch, decay_after=r.epochs // 2 - 1)
        fit(net, x, y, recipe, gen, device, data.image_size, dsa(r.dsa_strategy), after_pass=after_pass)
        self._save(net)
        return True

    def _save(self, net: torch.nn.Module) -> None:
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        write_atomic(self.path, save(state, metadata={"identity": json.dumps(self.identity, sort_keys=True)}))

    def load(self, data: DataBundle, device: torch.device) -> torch.nn.Module:
        from safetensors.torch import load_file

        if not self.present():
            raise FileNotFoundError(f"teacher {self.label} is not trained ({self.path})")
        net = self.network(data)
        net.load_state_dict(load_file(str(self.path)))
        return net.to(device).eval()


def _identity(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("identity", "null"))
    except Exception:  # absent, truncated, not safetensors
        return None


def cached_teachers(root: Path) -> list[tuple[dict, Path]]:
    """(identity, file) of every teacher cached under ``root``, for ``ddbench list``."""
    top = cache_dir(root) / SUBDIR
    found = [(_identity(p), p) for p in sorted(top.glob("*.safetensors"))] if top.is_dir() else []
    return [(ident, p) for ident, p in found if ident]
