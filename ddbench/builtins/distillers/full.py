"""``full``: the whole training set, the upper bound of every DD table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from annotated_types import Ge

from ddbench import hookimpl
from ddbench.components import Distiller
from ddbench.context import DistillContext
from ddbench.synthetic import SyntheticSet


class Full(Distiller):
    """The whole training set (upper bound); independent of IPC, trained for `full.epochs` passes."""

    name = "full"
    uses_ipc = False
    #: the set is the training split itself: nothing worth saving as an artifact
    save_artifact: ClassVar[bool] = False

    @dataclass
    class Params:
        # Passes over the whole training set for evaluation. The protocol's 1000 passes are
        # meant for sets of a few hundred images; over 50,000 they would be absurd.
        epochs: Annotated[int, Ge(0)] = 300

    presets = {"small": {"epochs": 20}}

    def distill(self, ctx: DistillContext) -> SyntheticSet:
        return SyntheticSet(ctx.data.x_train, ctx.data.y_train, epochs=self.params.epochs)


@hookimpl
def register_distillers(register):
    register(Full)
