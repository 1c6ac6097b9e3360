"""``file:PATH``: a distilled set released as a file, evaluated like any method's.

Researchers compare against sets that their authors released (MTT's and DATM's
``images_best.pt``/``labels_best.pt``/``lr_best.pt``, SRe2L/RDED image folders, ...).
``--methods file:PATH`` puts such a set in the cross-product beside ddbench's own methods,
with the same protocol, seeds and statistics. Formats and rules: ``ddbench.external``.

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
from ddbench.components import DistillContext, Distiller, SyntheticSet
from ddbench.errors import DDBenchError
from ddbench.external import ExternalSet, content_hash, fit_to_dataset, read_external

#: (absolute path, content hash) -> what the file holds: planning asks several times
_READ: dict[tuple[str, str], ExternalSet] = {}


def read_cached(path: Path) -> ExternalSet:
    key = (str(path.absolute()), content_hash(path))
    if key not in _READ:
        _READ[key] = read_external(path)
    return _READ[key]


@dataclass
class FileParams:
    #: the file or folder (the spec's argument); where it is, not what it is: no key
    path: str = ""
    #: the images' space: "pixel" ([0, 1]), "normalized" (the dataset's), or "auto"
    #: (``ddbench.external``: pixel when every value is in [0, 1]; printed at planning)
    space: Literal["auto", "pixel", "normalized"] = "auto"
    #: sha256 of the content, filled at planning: what keys the result
    sha256: str = ""


class ExternalFile(Distiller):
    """A distilled set from a file or folder (file:PATH): .safetensors, .pt, .npz, image folders."""

    name = "file"
    Params = FileParams
    argument = "path"
    locators = ("path",)

    @classmethod
    def with_argument(cls, resolved, arg: str, spec: str):
        path = Path(arg).expanduser()
        if not path.exists():
            head, plus, tail = arg.rpartition("+")
            if plus and Path(head).expanduser().exists():
                raise DDBenchError(f"method {spec!r}: a set from a file takes no objectives (+{tail})")
            raise DDBenchError(f"method {spec!r}: {arg} does not exist")
        read_cached(path)  # a file that cannot be read is refused here, before anything is written
        params = dataclasses.replace(resolved.params, path=str(path.absolute()), sha256=content_hash(path))
        return dataclasses.replace(resolved, params=params, spec=spec)

    @classmethod
    def own_ipc(cls, arg: str) -> int | None:
        ext = read_cached(Path(arg).expanduser())
        labels = ext.labels if ext.labels is not None else ext.soft.argmax(1)
        return int(labels.bincount().max()) if len(labels) else 1

    def gives_soft_labels(self) -> bool:
        return read_cached(Path(self.params.path)).soft is not None

    def load(self, data, who: str) -> tuple[SyntheticSet, str]:
        """The set fitted to ``data`` and the space used; the file must still be the one planned."""
        path = Path(self.params.path)
        if content_hash(path) != self.params.sha256:
            raise DDBenchError(f"{who}: {path} changed since it was planned (sha256 differs); run again")
        return fit_to_dataset(read_cached(path), data, self.params.space, who)

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        synset, space = self.load(ctx.data, f"file:{self.params.path}")
        synset.meta.update(source=self.params.path, sha256=self.params.sha256, space=space)
        return synset


@hookimpl
def register_distillers(register):
    register(ExternalFile)
