"""The cells ``run --scores`` adds to a plan: what DD-Ranking's scores
(``ddbench.analysis.scores``) are computed from. The plan owns the rule; the analysis only
reads the cells it produced."""

from __future__ import annotations

#: the reference methods every score compares a synthetic set with
RANDOM, FULL = "random", "full"


def with_score_cells(methods: list[str], sets: dict) -> tuple[list[str], dict]:
    """``random`` and ``full`` added to the methods, hard labels to ``eval.labels`` and
    both ``eval.dsa`` values (unless given) to the protocol's axes (``sets`` as
    ``ddbench.plan.parse_sets`` returns them)."""
    methods = list(dict.fromkeys([*methods, RANDOM, FULL]))
    sets = dict(sets)
    sets[("eval", "labels")] = list(dict.fromkeys(["hard", *sets.get(("eval", "labels"), [])]))
    sets.setdefault(("eval", "dsa"), ["true", "false"])
    return methods, sets


def needed(method: str, params) -> bool:
    """Whether ``run --scores`` keeps a cell: the full split is the scores' reference under
    hard labels with augmentation only; every other method needs every variant."""
    return method != FULL or (params.labels == "hard" and params.dsa)
