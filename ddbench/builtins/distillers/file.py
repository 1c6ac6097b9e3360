"""``file:PATH``: a distilled set released as a file, evaluated like any method's.

Researchers compare against sets that their authors released (MTT's and DATM's
``images_best.pt``/``labels_best.pt``/``lr_best.pt``, SRe2L/RDED image folders, ...).
``--methods file:PATH`` puts such a set in the cross-product beside ddbench's own methods,
with the same protocol, seeds and statistics. Formats and rules: ``ddbench.data.released``;
the images' space: ``ddbench.data.spaces``. A learned lr in the file replaces ``eval.lr``, so
planning refuses an explicit ``--set eval.lr`` beside one (``ddbench.plan.prepare``).

The result is keyed by the file's content hash, not its path: a re-run is cached, a
changed file is a new result, a moved file is the same one. The set is planned at its own
IPC (images per class in the file), whatever ``--ipc`` says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ddbench import hookimpl
from ddbench.components import Distiller
from ddbench.context import DistillContext
from ddbench.data.cache import fingerprint
from ddbench.data.released import ExternalSet, fit_to_dataset, read_external
from ddbench.errors import DDBenchError
from ddbench.storage.atomic import content_hash
from ddbench.synthetic import SyntheticSet

#: the files' (path, size, mtime) fingerprint -> (sha256, what they hold): planning asks for
#: both several times (key, IPC, soft labels, the check), a file is hashed and read once
_READ: dict[str, tuple[str, ExternalSet]] = {}


def read_cached(path: Path) -> tuple[str, ExternalSet]:
    """(content hash, contents) of a file or folder; read again only when it changed."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = fingerprint(files)
    if stamp not in _READ:
        _READ[stamp] = (content_hash(path), read_external(path))
    return _READ[stamp]


@dataclass
class FileParams:
    #: the file or folder (the spec's argument); where it is, not what it is: no key
    path: str = ""
    #: the images' space: "pixel" ([0, 1]), "normalized" (the dataset's mean/std), "zca" (whitened
    #: as the zca condition does), or "auto": what the file says, else its values where they are
    #: unambiguous, else an error asking for this (``ddbench.data.spaces``; printed at planning)
    space: Literal["auto", "pixel", "normalized", "zca"] = "auto"
    #: sha256 of the content, filled at planning: what keys the result
    sha256: str = ""


def _existing(arg: str) -> Path:
    """The path of ``file:ARG``, or a one-line error (``file:X+mim``: no objectives)."""
    path = Path(arg).expanduser()
    if not path.exists():
        head, plus, tail = arg.rpartition("+")
        if plus and Path(head).expanduser().exists():
            raise DDBenchError(f"method 'file:{arg}': a set from a file takes no objectives (+{tail})")
        raise DDBenchError(f"method 'file:{arg}': {arg} does not exist")
    return path


class ExternalFile(Distiller):
    """A distilled set from a file or folder (file:PATH): .safetensors, .pt, .npz, image folders."""

    name = "file"
    Params = FileParams
    argument = "path"
    locators = ("path",)

    @classmethod
    def with_argument(cls, resolved, arg: str, spec: str):
        # a file that cannot be read is refused here, before anything is written
        path = _existing(arg)
        sha256, _ = read_cached(path)
        params = dataclasses.replace(resolved.params, path=str(path.absolute()), sha256=sha256)
        return dataclasses.replace(resolved, params=params, spec=spec)

    @classmethod
    def own_ipc(cls, arg: str) -> int | None:
        _, ext = read_cached(_existing(arg))
        labels = ext.labels if ext.labels is not None else ext.soft.argmax(1)
        # counts of the values present: labels are checked against the classes later, by fit
        return int(labels.unique(return_counts=True)[1].max()) if len(labels) else 1

    def gives_soft_labels(self) -> bool:
        return read_cached(Path(self.params.path))[1].soft is not None

    def load(self, data, who: str) -> tuple[SyntheticSet, str]:
        """The set fitted to ``data`` and the space used; the file must still be the one planned."""
        path = Path(self.params.path)
        sha256, ext = read_cached(path)
        if sha256 != self.params.sha256:
            raise DDBenchError(f"{who}: {path} changed since it was planned (sha256 differs); run again")
        return fit_to_dataset(ext, data, self.params.space, who)

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        synset, space = self.load(ctx.data, f"file:{self.params.path}")
        synset.meta.update(source=self.params.path, sha256=self.params.sha256, space=space)
        return synset


@hookimpl
def register_distillers(register):
    register(ExternalFile)
