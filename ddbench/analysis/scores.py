"""DD-Ranking's label- and augmentation-robust scores, computed from stored cells.

Definitions (DD-Ranking, NUS-HPC-AI-Lab/DD-Ranking README and ``ddranking/metrics``;
Li et al., arXiv 2505.13300), for a method's synthetic set S, a random real subset R at
the same IPC, and the full training split F, all evaluated with the same recipe:

- HLR (hard label recovery) = Acc(F, hard) - Acc(S, hard)
- IOR (improvement over random) = Acc(S, L) - Acc(R, L), under the method's labels L
- LRS = (e^a - e^-1) / (e - e^-1) with a = w IOR - (1 - w) HLR, w = 0.5 by default
- ARS = the same normalisation of b = g (Acc(S, L, aug) - Acc(R, L, aug))
  + (1 - g) (Acc(S, L, no aug) - Acc(R, L, no aug)), g = 0.5 by default

ddbench computes them for every label mode L that the store holds (``hard``, ``soft``,
``teacher``), so a hard-label method's scores (L = hard) and a soft-label set's (L = soft
or teacher) come from the same cells. Accuracies enter as fractions in [0, 1], as the
paper's normalisation to [0, 1] assumes (DD-Ranking's code at 0.2.0 passes percentages
to ``exp``; we follow the paper). Per evaluation run (S and R paired by their shared
seeds), then mean and std over runs, as DD-Ranking averages over its ``num_eval`` rounds;
Acc(F) enters as its mean. Augmentation "on" is the protocol's (DSA, or DC's), "off" is
``eval.dsa=false`` without DC augmentation; every other protocol parameter must match.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from tabulate import tabulate

from ddbench.analysis.results import Table
from ddbench.evaluation import protocol as proto
from ddbench.plan.score_cells import FULL, RANDOM

#: protocol parameters that vary between the cells a score combines
_VARYING = (*proto.LABEL_PARAMS, *proto.AUGMENT_PARAMS, *proto.NOT_RECIPE)
_EVAL_SUFFIX = re.compile(r"\s*eval\[[^\]]*\]$")


def normalise(x: float) -> float:
    """DD-Ranking's map of [-1, 1] onto [0, 1]: (e^x - e^-1) / (e - e^-1)."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


@dataclass
class Score:
    method: str
    dataset: str
    ipc: str
    model: str
    labels: str
    hlr: float | None  # fractions; None where a cell is missing
    ior: float | None
    lrs: tuple[float, float] | None  # (mean, std) in [0, 1]
    ars: tuple[float, float] | None
    n: int
    missing: str = ""


def _recipe(table: Table) -> tuple:
    p = table.protocol_params
    return (proto.unstarred(table.protocol).split("+")[0], table.env,  # aug off stars a paper's protocol
            tuple(sorted((k, str(v)) for k, v in p.items() if k not in _VARYING)))


def _index(tables: list[Table]):
    """(recipe, dataset label, ipc, bare model, method, labels, aug) -> unit -> accuracy."""
    out: dict[tuple, dict] = {}
    for t in tables:
        labels, aug = proto.label_mode(t.protocol_params), proto.augments(t.protocol_params)
        for cell, by_method in t.cells.items():
            model = _EVAL_SUFFIX.sub("", cell.model)
            for method, sample in by_method.items():
                if sample.values:
                    key = (_recipe(t), cell.dataset_label, cell.ipc, model, method, labels, aug)
                    out.setdefault(key, {}).update(sample.values)
    return out


def _paired(a: dict, b: dict) -> list[tuple[float, float]]:
    return [(a[u], b[u]) for u in sorted(set(a) & set(b), key=str)]


def compute(tables: list[Table], lrs_weight: float = 0.5, ars_weight: float = 0.5) -> list[Score]:
    """A score row per (method, dataset, IPC, model, label mode) where LRS or ARS can be
    computed (its random cells, and full or the cells without augmentation)."""
    idx = _index(tables)
    out = []
    for (recipe, dataset, ipc, model, method, labels, aug), syn in sorted(idx.items(), key=str):
        if method in (RANDOM, FULL) or not aug:
            continue
        rdm = idx.get((recipe, dataset, ipc, model, RANDOM, labels, True))
        if rdm is None:
            continue
        pairs = _paired(syn, rdm)
        syn_hard = idx.get((recipe, dataset, ipc, model, method, "hard", True))
        real = idx.get((recipe, dataset, "all", model, FULL, "hard", True))
        missing = []
        lrs = hlr = None
        if syn_hard is None or real is None:
            missing.append("LRS needs " + " and ".join(
                w for w, have in (("full", real), (f"{method} under hard labels", syn_hard)) if have is None))
        else:
            real_mean = statistics.fmean(real.values())
            hard = dict(syn_hard)
            units = [u for u in sorted(set(syn) & set(rdm) & set(hard), key=str)]
            per_hlr = [real_mean - hard[u] for u in units]
            per_ior = [syn[u] - rdm[u] for u in units]
            per = [normalise(lrs_weight * i - (1 - lrs_weight) * h) for i, h in zip(per_ior, per_hlr, strict=True)]
            lrs, hlr = _ms(per), statistics.fmean(per_hlr) if per_hlr else None
        ior = statistics.fmean(s - r for s, r in pairs) if pairs else None
        syn_off = idx.get((recipe, dataset, ipc, model, method, labels, False))
        rdm_off = idx.get((recipe, dataset, ipc, model, RANDOM, labels, False))
        ars = None
        if syn_off is None or rdm_off is None:
            missing.append("ARS needs the cells without augmentation (eval.dsa=false)")
        else:
            units = [u for u in sorted(set(syn) & set(rdm) & set(syn_off) & set(rdm_off), key=str)]
            per = [normalise(ars_weight * (syn[u] - rdm[u]) + (1 - ars_weight) * (syn_off[u] - rdm_off[u]))
                   for u in units]
            ars = _ms(per)
        if lrs is None and ars is None:  # a plain run: no score to show (``run --scores`` adds the cells)
            continue
        out.append(Score(method, dataset, ipc, model, labels, hlr, ior, lrs, ars, len(pairs), "; ".join(missing)))
    return out


def _ms(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _fmt(ms: tuple[float, float] | None) -> str:
    if ms is None:
        return "-"
    mean, std = ms
    return f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def render(scores: list[Score], lrs_weight: float = 0.5, ars_weight: float = 0.5) -> str:
    if not scores:
        return ""
    rows = [[s.method, s.dataset, s.ipc, s.model, s.labels, _pp(s.hlr), _pp(s.ior), _fmt(s.lrs), _fmt(s.ars), s.n]
            for s in scores]
    text = tabulate(rows, headers=["method", "dataset", "ipc", "model", "labels", "HLR pp", "IOR pp",
                                   "LRS %", "ARS %", "n"], disable_numparse=True)
    notes = sorted({f"{s.method} {s.dataset} ipc{s.ipc} {s.labels}: {s.missing}" for s in scores if s.missing})
    return (f"DD-Ranking scores (LRS weight {lrs_weight:g}, ARS weight {ars_weight:g}; HLR = full - set under "
            f"hard labels, IOR = set - random under the row's labels; mean ± std over evaluation runs)\n"
            + text + "".join(f"\n  {n}" for n in notes))
