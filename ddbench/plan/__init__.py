"""Planning: from what the user asked for to a checked plan of jobs and cells.

``parse`` reads the inputs, ``resolve`` gives components their parameters (checked
against their declarations), ``jobs`` builds the cross-product with keys and seeds, and
``prepare`` loads the data and checks everything else; ``config`` reads sweep files and
``score_cells`` says which cells ``--scores`` adds. Nothing here writes anything.

Imports: the registry (components by name), evaluation, data and the foundation; never
analysis, execution, the runner or the CLI (the CLI adapts its options to ``config``).
"""

from ddbench.plan.jobs import Cell, Job, build_plan, method_params
from ddbench.plan.parse import (
    MethodSpec,
    model_entry,
    parse_int_list,
    parse_method,
    parse_sets,
    split_list,
)
from ddbench.plan.prepare import Prepared, RunOptions, data_root, pick_device, prepare
from ddbench.plan.resolve import PRESETS, Resolved, Resolver

__all__ = [
    "PRESETS", "Cell", "Job", "MethodSpec", "Prepared", "Resolved", "Resolver", "RunOptions", "build_plan",
    "data_root", "method_params", "model_entry", "parse_int_list", "parse_method", "parse_sets", "pick_device",
    "prepare", "split_list",
]
