"""Expert trajectories (MTT's ``buffer.py``): networks trained on the real data, every
epoch's parameters kept, cached on disk and shared by every method and run that needs them.

A buffer is identified by everything that determines it: the dataset (spec, parameters,
condition), the model and its parameters, and the training recipe (epochs, lr, momentum,
weight decay, batch, augmentation, images per class, seed). ``mtt`` and ``mtt+mim`` with
the same recipe therefore share one buffer, whatever their distillation parameters. The
number of experts is not part of the key: expert ``i`` is the same whatever the count, so
asking for more experts later trains only the new ones.

Layout: ``<data root>/.ddbench-cache/experts/<name>-<key>/expert_<i>.safetensors``, each a
single float32 tensor ``params`` of shape (epochs + 1, num_params) (the initial parameters,
then one row per epoch) plus the recipe as metadata, and ``recipe.json`` beside them for
people. Files are written atomically and read with safetensors (no pickle); reading a
trajectory maps only the two rows a distillation step needs. A file that is unreadable
or of the wrong shape counts as missing and is trained again.
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

#: bump when a change to the training code below changes the trajectories
FORMAT_VERSION = 1
SUBDIR = "experts"


@dataclass(frozen=True)
class ExpertRecipe:
    """How experts are trained: the reference ``buffer.py`` defaults are MTT's defaults."""

    model: str
    model_params: str  # JSON of the model's parameters (hashable)
    num_experts: int
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch: int
    dsa: bool
    dsa_strategy: str  # resolved (not "auto")
    #: 0 = every training image; else at most this many per class (CPU budgets)
    images_per_class: int
    seed: int


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).float().cpu()


class ExpertBuffer:
    """The trajectories of one (dataset, condition, recipe): which exist, build, read."""

    def __init__(self, root: Path, dataset_key: dict[str, Any], recipe: ExpertRecipe):
        self.recipe = recipe
        # expert i depends on the key and i only: asking for more experts later adds to
        # the same buffer instead of starting another one
        trained = {k: v for k, v in dataclasses.asdict(recipe).items() if k != "num_experts"}
        self.identity = {"format": FORMAT_VERSION, "dataset": dataset_key, "recipe": trained}
        self.key = digest(self.identity, 16)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(dataset_key.get("dataset", "data")))[:30]
        self.folder = cache_dir(root) / SUBDIR / f"{name.strip('_.') or 'data'}-{self.key}"

    def path(self, i: int) -> Path:
        return self.folder / f"expert_{i}.safetensors"

    def missing(self) -> list[int]:
        return [i for i in range(self.recipe.num_experts)
                if not _readable(self.path(i), self.key, self.recipe.epochs)]

    def status(self) -> str:
        """"present (N)" or "to build (k of N)": for ``--dry-run`` and ``ddbench experts``."""
        n, miss = self.recipe.num_experts, len(self.missing())
        return f"present ({n})" if not miss else f"to build ({miss} of {n})"

    def build(
        self,
        data: DataBundle,
        build_model: Callable[[], torch.nn.Module],
        device: torch.device,
        progress: Callable[[int, int], None] = lambda step, total: None,
    ) -> int:
        """Train the missing experts; returns how many were trained."""
        missing = self.missing()
        if not missing:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "recipe.json").write_text(json.dumps(self.identity, indent=2, sort_keys=True))
        r = self.recipe
        total = len(missing) * r.epochs
        done = 0
        for i in missing:
            gen = torch.Generator()
            gen.manual_seed(int(self.key[:12], 16) + 7919 * i + r.seed)
            torch.manual_seed(int(self.key[:12], 16) + 7919 * i + r.seed)
            x, y = self._training_set(data, gen)
            x, y = x.to(device), y.to(device)
            net = build_model().to(device)
            rows = [flat_params(net)]

            def after_pass(_: int, loss: torch.Tensor, i=i, net=net, rows=rows) -> None:
                nonlocal done
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"expert {i} diverged (loss {float(loss)}); lower the expert lr")
                rows.append(flat_params(net))
                done += 1
                progress(done, total)

            # buffer.py: a constant lr, every epoch's parameters kept
            recipe = Recipe(r.epochs, r.lr, r.momentum, r.weight_decay, r.batch)
            fit(net, x, y, recipe, gen, device, data.image_size, dsa(r.dsa_strategy if r.dsa else None),
                after_pass=after_pass)
            self._save(i, torch.stack(rows))
        return len(missing)

    def _training_set(self, data: DataBundle, gen: torch.Generator):
        per = self.recipe.images_per_class
        if per <= 0:
            return data.x_train, data.y_train
        idx = torch.cat([data.sample_indices(c, per, gen) for c in range(data.num_classes)])
        return data.x_train[idx], data.y_train[idx]

    def _save(self, i: int, params: torch.Tensor) -> None:
        from safetensors.torch import save

        write_atomic(self.path(i), save({"params": params.contiguous()}, metadata={"key": self.key}))

    def read(self, i: int, epochs: list[int]) -> list[torch.Tensor]:
        """Rows ``epochs`` of expert ``i`` (flat parameter vectors), reading only those."""
        from safetensors import safe_open

        with safe_open(str(self.path(i)), framework="pt") as f:
            sl = f.get_slice("params")
            return [sl[e : e + 1][0].clone() for e in epochs]


def cached_buffers(root: Path) -> list[tuple[dict, int, Path]]:
    """(identity, number of readable experts, folder) of each buffer cached under ``root``,
    for ``ddbench list``."""

    out = []
    top = cache_dir(root) / SUBDIR
    for folder in sorted(top.iterdir()) if top.is_dir() else []:
        try:
            identity = json.loads((folder / "recipe.json").read_text())
        except (OSError, ValueError):
            continue
        key, epochs = folder.name.rsplit("-", 1)[-1], identity["recipe"]["epochs"]
        n = sum(_readable(f, key, epochs) for f in folder.glob("expert_*.safetensors"))
        out.append((identity, n, folder))
    return out


def _readable(path: Path, key: str, epochs: int) -> bool:
    """An expert file that opens, belongs to buffer ``key`` and holds ``epochs + 1`` rows."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key") == key and \
                f.get_slice("params").get_shape()[0] == epochs + 1
    except Exception:  # absent, truncated, not safetensors
        return False
