"""Whether stored results were evaluated under a paper's protocol at its published values.

Judged from what every row stores (the protocol's parameters, the dataset and the model)
against the registered ``ProtocolSpec`` of the stored name, not from the stored label, so
rows written before labels carried a star (``dsa-eval/v1`` after ``--set eval.epochs=100``)
are judged like new ones. The grouping stars such tables (``results.group``), the report's
protocol line lists their overrides, and ``ddbench check`` never compares them with a
paper's numbers (``check.samples``).
"""

from __future__ import annotations

import re

from ddbench.evaluation import protocol as proto
from ddbench.registry import load_registry

#: stored name (``dsa-eval``) -> the registered ``ProtocolSpec`` class
Specs = dict[str, type]
#: field -> (published value, value used); None: not a registered paper's protocol
Deviations = dict[str, tuple] | None


def registered() -> Specs:
    """The protocols registered here (built-ins and installed plugins) by stored name, for
    callers that hold no registry (a caller that does passes ``Registry.protocol_specs()``)."""
    return load_registry().protocol_specs()


def component(label: str | None) -> str:
    """The registered name in a stored dataset or model label, which the protocol's rules
    take: ``imagefolder:DIR[stats=x]`` -> ``imagefolder``, ``convnet eval[epochs=3]`` -> ``convnet``."""
    return re.split(r"[:\[ ]", label or "", maxsplit=1)[0]


def judge(specs: Specs, stored: dict, dataset: str | None, model: str | None,
          model_params: dict) -> Deviations:
    """How a stored protocol (``Protocol.as_dict``) departs from its paper's published values
    for this dataset and model: {} when it does not; None when it is not a registered
    paper's protocol (``uniform``, or a plugin's that is not installed here). Another version
    than the registered one counts as a departure: its published values are not known here."""
    spec = specs.get(stored.get("name"))
    if spec is None or not spec.published:
        return None
    devs = proto.deviations(spec, proto.from_stored(stored), component(dataset), component(model), model_params)
    if stored.get("version") != spec.version:
        devs = {"version": (spec.version, stored.get("version")), **devs}
    return devs


def overrides_text(table) -> str:
    """``epochs=100 (dsa-eval: 1000), num_eval=2 (20)``: each override, then its published value."""
    name = table.protocol_params.get("name", "")
    return ", ".join(f"{k}={actual} ({f'{name}: ' if i == 0 else ''}{want})"
                     for i, (k, (want, actual)) in enumerate(table.deviations.items()))


def protocol_line(table) -> str:
    """The protocol under a table (a ``results.Table``): label, hash, parameters, environment;
    for a starred one a second line with its overrides of the published values."""
    params = {k: v for k, v in table.protocol_params.items() if k not in ("name", "version")}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    line = f"protocol {table.protocol} #{table.protocol_hash[:8]} ({shown}); {table.env}"
    if table.deviations:
        line += (f"\n{table.protocol} (overrides: {overrides_text(table)}): not the published protocol, "
                 "never checked against its numbers")
    return line


def why_not_published(table) -> str:
    """Why ``ddbench check`` does not compare this table with a paper's number of its protocol."""
    if table.deviations:
        shown = ", ".join(f"{k}={actual}" for k, (_, actual) in table.deviations.items())
        return f"{table.protocol} ({shown}): not the published protocol"
    return f"{table.protocol}: its published values are unknown here (not a registered paper's protocol)"
