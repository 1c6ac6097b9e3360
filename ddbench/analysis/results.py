"""Stored results grouped for comparison: tables, rows (cells) and per-method samples.

A *table* holds results that may be pooled: the same evaluation protocol (name, version
and parameter hash) and the same numbers-relevant environment (ddbench version and torch
major.minor). Results of different protocols or environments never share a table. A paper's
protocol away from its published values is a table of its own, starred (``dsa-eval/v1*``,
``ddbench.analysis.protocols``), whatever the rows' stored labels say. A set's networks are
judged by the largest run that evaluated it (``num_eval`` is outside the keys: a 20-network
run finds a 2-network run's cells stored and adds 18), so they pool as a 20-network protocol.

A *cell* (a table row) is (dataset, conditions, IPC, evaluation model). In it each method
variant has a *sample*: with several distillation seeds the unit of replication is the
seed (each synthetic set's evaluation runs are averaged first); with one seed per method
everywhere in the cell, the unit is the evaluation run. When several synthetic sets of
the same variant share a seed (the method's code changed between runs and its key with
it), the newest is used and the others are counted as superseded.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from ddbench.analysis import protocols
from ddbench.data.conditions import dataset_label
from ddbench.evaluation.protocol import starred, unstarred
from ddbench.storage.records import ResultRow, SynsetRow
from ddbench.storage.store import Store

SEED, EVAL = "distillation seed", "evaluation run"
#: component name -> {late parameter: its neutral value} (``Registry.late_params``)
LateParams = dict[str, dict]


@dataclass(frozen=True, order=True)
class CellId:
    dataset: str
    conditions: str
    ipc: str
    model: str

    @property
    def ipc_sort(self) -> tuple:
        return (self.ipc == "all", int(self.ipc) if self.ipc.isdigit() else 0)

    def sort_key(self) -> tuple:
        return (self.dataset, self.conditions, self.ipc_sort, self.model)

    @property
    def dataset_label(self) -> str:
        return dataset_label(self.dataset, self.conditions)

    def short(self) -> str:
        return f"{self.dataset_label}/ipc{self.ipc}/{self.model}"


@dataclass
class Sample:
    """One method variant in one cell."""

    unit: str = EVAL
    values: dict = field(default_factory=dict)  # unit id -> accuracy in [0, 1]
    failed: int = 0
    superseded: int = 0
    distill_keys: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


@dataclass
class Table:
    protocol: str  # e.g. ddbench-eval/v1, dsa-eval/v1* (starred: not at its published values)
    protocol_hash: str
    protocol_params: dict
    env: str  # e.g. "ddbench 0.1.0, torch 2.14"
    methods: list[str] = field(default_factory=list)  # column order
    cells: dict[CellId, dict[str, Sample]] = field(default_factory=dict)
    #: field -> (published, used) where a paper's protocol departs from its published values;
    #: None: not a registered paper's protocol (``protocols.judge``)
    deviations: protocols.Deviations = None

    def sorted_cells(self) -> list[CellId]:
        return sorted(self.cells, key=CellId.sort_key)


@dataclass
class Filters:
    run: str | None = None  # run id or unique prefix
    datasets: list[str] | None = None
    methods: list[str] | None = None  # a name matches its swept variants: dm+mim -> dm+mim[lambda=0.4]
    ipcs: list[str] | None = None
    models: list[str] | None = None
    conditions: list[str] | None = None

    def method_ok(self, label: str) -> bool:
        return _selects(self.methods, label)

    def dataset_ok(self, name: str) -> bool:
        """``--datasets X`` selects X and its settings (``X[stats=cifar10]``), as methods do."""
        return _selects(self.datasets, name)


def _selects(wanted: list[str] | None, name: str) -> bool:
    """No filter, or ``name`` is a wanted one or one of its variants (``NAME[k=v]``)."""
    return not wanted or any(name == w or name.startswith(w + "[") for w in wanted)


def environment(versions_json: str | None) -> str:
    try:
        v = json.loads(versions_json or "{}")
    except json.JSONDecodeError:
        v = {}
    torch_v = ".".join(str(v.get("torch", "?")).split("+")[0].split(".")[:2])
    return f"ddbench {v.get('ddbench', '?')}, torch {torch_v}"


def load_rows(store: Store, filters: Filters) -> list[ResultRow]:
    keys = None
    if filters.run:
        keys = store.run_cell_keys(store.resolve_run(filters.run))
    rows = store.results(keys) if keys is not None else store.results()
    out = []
    for r in rows:
        if not filters.dataset_ok(r.dataset):
            continue
        if filters.ipcs and r.ipc_label not in filters.ipcs:
            continue
        if filters.models and r.model not in filters.models:
            continue
        if filters.conditions and r.conditions not in filters.conditions:
            continue
        if not filters.method_ok(r.method):
            continue
        out.append(r)
    return out


def group(rows: list[ResultRow], late: LateParams, method_order: list[str] | None = None,
          specs: protocols.Specs | None = None) -> list[Table]:
    """Rows -> tables of cells of samples (see the module docstring for the rules).

    ``late`` is the installed components' ``late_params`` (``Registry.late_params()``) and
    ``specs`` the registered protocols (``protocols.registered()``, the default): a pure
    function of the rows and what the caller hands it."""
    rows = sorted(rows, key=lambda r: r.created or 0)
    variant = variant_labels(rows, late)
    model_label = _model_labels(rows)
    protocol_of = _protocols(rows, protocols.registered() if specs is None else specs)
    tables: dict[tuple, Table] = {}
    # (table, cell, variant) -> seed -> {distill_key: [(created, eval_index, accuracy)]}
    raw: dict[tuple, dict[int, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    failed: dict[tuple, int] = defaultdict(int)
    for r in rows:
        env = environment(r.versions)
        plabel, stored, devs = protocol_of[r.cell_key]
        tkey = (plabel, r.protocol_hash, env, tuple(devs.items()) if devs else None)
        if tkey not in tables:
            tables[tkey] = Table(plabel, r.protocol_hash, stored, env, deviations=devs)
        table = tables[tkey]
        label = variant[r.cell_key]
        if label not in table.methods:
            table.methods.append(label)
        cell = CellId(r.dataset, r.conditions, r.ipc_label, model_label[r.cell_key])
        table.cells.setdefault(cell, {})
        k = (tkey, cell, label)
        if r.ok:
            raw[k][r.seed][r.distill_key].append((r.created or 0, r.eval_index, r.accuracy))
        else:
            failed[k] += 1
            raw[k]  # noqa: B018 - the variant exists in the cell even if every run failed
    for (tkey, cell, label), seeds in raw.items():
        sample = Sample(failed=failed.get((tkey, cell, label), 0))
        for seed, sets in sorted(seeds.items()):
            newest = max(sets, key=lambda dk: max(c for c, _, _ in sets[dk]))
            sample.superseded += len(sets) - 1
            sample.distill_keys.append(newest)
            sample.seeds.append(seed)
            sample.values[seed] = [(i, a) for _, i, a in sorted(sets[newest], key=lambda t: t[1])]
        tables[tkey].cells[cell][label] = sample
    for table in tables.values():
        for samples in table.cells.values():
            by_seed = any(len(s.values) > 1 for s in samples.values())
            for s in samples.values():
                if by_seed:
                    s.unit = SEED
                    s.values = {seed: statistics.fmean(a for _, a in runs) for seed, runs in s.values.items()}
                else:
                    s.unit = EVAL
                    s.values = {(seed, i): a for seed, runs in s.values.items() for i, a in runs}
        if method_order:
            rank = {m: i for i, m in enumerate(method_order)}
            table.methods.sort(key=lambda m: rank.get(m, len(rank)))
    return sorted(tables.values(), key=lambda t: (t.protocol, t.env, t.protocol_hash))


def _protocols(rows: list[ResultRow], specs: protocols.Specs) -> dict[str, tuple[str, dict, protocols.Deviations]]:
    """cell_key -> (table label, stored parameters, deviations): the label starred exactly where
    the row's protocol departs from its published values. ``num_eval`` is that of the largest
    run among the rows of the row's networks (one set, model and recipe)."""
    params = {p: json.loads(p or "{}") for p in {r.protocol_params for r in rows}}
    networks = {r.cell_key: (unstarred(r.protocol or ""), r.protocol_hash, environment(r.versions),
                             r.distill_key, r.model, r.model_params) for r in rows}
    planned: dict[tuple, int] = defaultdict(int)
    for r in rows:
        nets = networks[r.cell_key]
        planned[nets] = max(planned[nets], params[r.protocol_params].get("num_eval", 0))
    out, memo = {}, {}
    for r in rows:
        base, n = networks[r.cell_key][0], planned[networks[r.cell_key]]
        key = (base, r.protocol_params, n, r.dataset, r.model, r.model_params)
        if key not in memo:
            stored = dict(params[r.protocol_params])
            if "num_eval" in stored:
                stored["num_eval"] = n
            devs = protocols.judge(specs, stored, r.dataset, r.model, r.json_field("model_params"))
            memo[key] = (starred(base) if devs else base, stored, devs)
        out[r.cell_key] = memo[key]
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _disambiguate(rows, label_of, params_of, key: str) -> dict[str, str]:
    """row.<key> -> label; a label whose rows carry different parameters gets the differing
    ones appended (e.g. ``model [width=64]``)."""
    variants: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        p = params_of(r)
        variants[label_of(r)][json.dumps(p, sort_keys=True, default=str)] = _flat(p)
    out = {}
    for r in rows:
        label = label_of(r)
        options = variants[label]
        if len(options) > 1:
            mine = _flat(params_of(r))
            keys = sorted({k for o in options.values() for k in set(o) | set(mine)
                           if o.get(k) != mine.get(k)})
            label = f"{label} [{','.join(f'{k}={mine.get(k)}' for k in keys)}]"
        out[getattr(r, key)] = label
    return out


def variant_labels(rows: list[ResultRow] | list[SynsetRow], late: LateParams) -> dict[str, str]:
    """Row key (``cell_key`` of result rows, ``distill_key`` of synthetic-set rows) ->
    method label with the parameters that tell its variants apart."""
    key = "distill_key" if rows and isinstance(rows[0], SynsetRow) else "cell_key"
    return _disambiguate(rows, lambda r: r.method, lambda r: _with_late(r.json_field("params"), late), key)


def _with_late(params: dict, late: LateParams) -> dict:
    """Rows store a late parameter only away from its neutral value; put that value back, so
    that a variant reads ``dm [dm.amp=off]`` beside ``dm [dm.amp=bf16]``."""
    return {c: {**late.get(c, {}), **p} if isinstance(p, dict) else p for c, p in params.items()}


def _model_labels(rows):
    return _disambiguate(rows, lambda r: r.model, lambda r: r.json_field("model_params"), "cell_key")


def synsets(store: Store, tables: list[Table]) -> list[SynsetRow]:
    """The stored rows of the synthetic sets the tables use (newest per seed)."""
    keys = {k for t in tables for cs in t.cells.values() for s in cs.values() for k in s.distill_keys}
    return [r for r in (store.synset(k) for k in sorted(keys)) if r]
