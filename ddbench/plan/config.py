"""Sweep files: ``ddbench run --config sweep.yaml`` (YAML or TOML).

A sweep that nobody can review as a shell line becomes a file in the repository:

    methods: [dm, dm+mim]          # every option of `ddbench run`, lists for comma options
    datasets: [mnist]
    ipc: [1, 10]
    set: {eval.epochs: 300}        # --set NS.PARAM: a value, or a list (a sweep axis)
    params:                        # the same per component, nested
      mim: {lambda: [0, 0.4, 0.8], estimator: nce}
    sweeps:                        # named sweeps: the top level is their shared default
      ablation: {methods: [dm+mim]}
      baseline: {methods: [random, dm]}

The file's values become the command's defaults: an option given on the command line wins; ``--set`` items merge, the command line's replacing the file's for
the same NS.PARAM. Every key and value is checked when the file is read: an unknown key or a
bad value is one error line naming the file, the key path and the valid choices. Reading
knows nothing of the command-line library: the CLI describes its options as ``OptionSpec``
(a flag or not, and the converter that checks a value's text as the command line would).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from ddbench import params as P
from ddbench.errors import DDBenchError
from ddbench.plan.resolve import namespaces, params_classes
from ddbench.registry import Registry

#: keys of a config file besides the command's options
STRUCTURE = ("set", "params", "sweeps")
#: options of ``run`` that say how to read the file or what to print, never held by one
NOT_IN_FILE = ("config", "sweep", "print_config", "dry_run", "sets", "help")


@dataclass(frozen=True)
class OptionSpec:
    """One option of the command a file configures: a flag (true/false only) or a value whose
    text ``convert`` checks and converts, raising ``ValueError`` with a one-line reason."""

    is_flag: bool
    convert: Callable[[str], Any]
    #: a comma-list option (``methods``), which a file may give as a YAML/TOML list
    takes_list: bool = False


#: a sweep file is a page of options, not data: larger or deeper is a mistake or an attack
MAX_BYTES = 1 << 20
MAX_DEPTH = 8


def read(path: Path) -> dict:
    """The file's mapping (YAML or TOML by suffix); one-line errors for unreadable files."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise DDBenchError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise DDBenchError(f"config {path}: larger than {MAX_BYTES >> 20} MiB; a sweep file is a page of options")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DDBenchError(f"config {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        fmt, parse, invalid = "TOML", tomllib.loads, tomllib.TOMLDecodeError
    elif suffix in (".yaml", ".yml"):
        import yaml

        fmt, parse, invalid = "YAML", yaml.safe_load, yaml.YAMLError
    else:
        raise DDBenchError(f"config {str(path)!r}: unknown format {suffix or '(no suffix)'!r}; "
                           "valid: .yaml, .yml, .toml")
    try:
        data = parse(text)
    except invalid as exc:
        raise DDBenchError(f"config {path}: not valid {fmt}: {_one_line(exc)}") from None
    except RecursionError:
        raise DDBenchError(f"config {path}: nested deeper than {MAX_DEPTH} levels") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DDBenchError(f"config {path}: expected a mapping of options at the top, got {type(data).__name__}")
    _check_tree(data, path, [], 1)
    return data


def _check_tree(node, path: Path, keys: list[str], depth: int) -> None:
    """Mapping keys are text, nothing nests deeper than ``MAX_DEPTH``, no list holds a null
    (an option's null means its default, as ``--print-config`` writes it)."""
    where = ".".join(k if k.isprintable() and k.strip() == k and k else repr(k) for k in keys) or "(top)"
    if depth > MAX_DEPTH:
        raise DDBenchError(f"config {path}: {where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise DDBenchError(f"config {path}: {where}: key {key!r} is not text; quote it")
            _check_tree(value, path, [*keys, key], depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if value is None:
                raise DDBenchError(f"config {path}: {where}[{i}]: null is not a value in a list")
            _check_tree(value, path, [*keys, f"[{i}]"], depth + 1)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def select(data: dict, path: Path, sweep: str | None) -> dict:
    """The effective mapping: the top level, with the named sweep's keys over it."""
    sweeps = data.get("sweeps")
    base = {k: v for k, v in data.items() if k != "sweeps"}
    if sweeps is None:
        if sweep:
            raise DDBenchError(f"config {path}: --sweep {sweep!r} given but the file has no 'sweeps'")
        return base
    if not isinstance(sweeps, dict) or not all(isinstance(v, dict) for v in sweeps.values()):
        raise DDBenchError(f"config {path}: 'sweeps' must map names to mappings of options")
    if sweep is None:
        raise DDBenchError(f"config {path} holds sweeps {', '.join(sweeps)}: choose one with --sweep NAME")
    if sweep not in sweeps:
        raise DDBenchError(f"config {path}: unknown sweep {sweep!r}; valid choices: {', '.join(sweeps)}")
    chosen = sweeps[sweep]
    if "sweeps" in chosen:
        raise DDBenchError(f"config {path}: sweeps.{sweep}.sweeps: sweeps do not nest")
    out = {**base, **{k: v for k, v in chosen.items() if k not in ("set", "params")}}
    for key in ("set", "params"):
        if key in base or key in chosen:
            out[key] = _merge(base.get(key), chosen.get(key), f"{path}: sweeps.{sweep}.{key}")
    return out


def _merge(a, b, where: str) -> dict:
    for side in (a, b):
        if side is not None and not isinstance(side, dict):
            raise DDBenchError(f"config {where}: expected a mapping, got {type(side).__name__}")
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (a or {}).items()}
    for k, v in (b or {}).items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_defaults(cfg: dict, path: Path, options: dict[str, OptionSpec],
                registry: Registry) -> tuple[dict, list[str]]:
    """(option name -> value, ``--set`` items) from the effective mapping, every key and
    value checked (one-line errors with the file and key path). ``options``: the command's
    options by parameter name."""
    options = {n: o for n, o in options.items() if n not in NOT_IN_FILE}
    defaults: dict[str, Any] = {}
    for key, value in cfg.items():
        name = key.replace("-", "_")
        if key in STRUCTURE:
            continue
        if name not in options:
            valid = sorted([*(n.replace("_", "-") for n in options), *STRUCTURE[:2]])
            raise DDBenchError(f"config {path}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if value is not None:  # null: the option's default (what --print-config writes for one)
            defaults[name] = _option_value(options[name], value, f"{path}: {key}")
    sets = _set_items(cfg.get("set"), cfg.get("params"), path, registry)
    return defaults, sets


def _scalar_text(value, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise DDBenchError(f"config {where}: expected a value or a list of values, got {type(value).__name__}")


def _option_value(opt: OptionSpec, value, where: str):
    if opt.is_flag:
        if not isinstance(value, bool):
            raise DDBenchError(f"config {where}: expected true or false, got {value!r}")
        return value
    if isinstance(value, list):
        if not opt.takes_list:
            raise DDBenchError(f"config {where}: expected one value, got a list")
        if not value:
            raise DDBenchError(f"config {where}: the list is empty")
        text = ",".join(_scalar_text(v, where) for v in value)
    else:
        text = _scalar_text(value, where)
    try:
        return opt.convert(text)  # choices and ranges, as on the command line
    except ValueError as exc:
        raise DDBenchError(f"config {where}: {_one_line(exc)}") from None


def _set_items(sets, params, path: Path, registry: Registry) -> list[str]:
    """``set`` and ``params`` as ``--set`` items, each NS.PARAM checked against the components."""
    flat: dict[tuple[str, str], tuple[Any, str]] = {}
    if sets is not None:
        if not isinstance(sets, dict):
            raise DDBenchError(f"config {path}: set: expected a mapping NS.PARAM: value")
        for key, value in sets.items():
            ns, dot, name = str(key).partition(".")
            if not dot or not ns or not name:
                raise DDBenchError(f"config {path}: set.{key}: expected NS.PARAM, e.g. dm.iterations")
            flat[(ns, name)] = (value, f"set.{key}")
    if params is not None:
        if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
            raise DDBenchError(f"config {path}: params: expected NS: {{PARAM: value}} mappings")
        for ns, block in params.items():
            for name, value in block.items():
                if (ns, name) in flat:
                    raise DDBenchError(f"config {path}: params.{ns}.{name} is also under set.{ns}.{name}")
                flat[(ns, name)] = (value, f"params.{ns}.{name}")
    items = []
    for (ns, name), (value, keypath) in flat.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise DDBenchError(f"config {path}: {keypath}: the list is empty")
        texts = [_scalar_text(v, f"{path}: {keypath}") for v in values]
        _check_param(ns, name, texts, f"{path}: {keypath}", registry)
        items.append(f"{ns}.{name}={','.join(texts)}")
    return items


def _check_param(ns: str, name: str, texts: list[str], where: str, registry: Registry) -> None:
    owners = params_classes(registry, ns)
    if not owners:
        valid = namespaces(registry)
        raise DDBenchError(f"config {where}: no component is named {ns!r}; valid names: {', '.join(valid)}")
    owner = next((o for o in owners if any(f.name == name for f in P.fields(o))), None)
    if owner is None:
        valid = sorted({f.name for o in owners for f in P.fields(o)})
        raise DDBenchError(f"config {where}: {ns!r} has no parameter {name!r}; valid: {', '.join(valid)}")
    for text in texts:
        try:
            P.parse_overrides(owner, {name: text}, ns)
        except DDBenchError as exc:
            raise DDBenchError(f"config {where}: {exc}") from None


def merge_sets(from_file: list[str], from_cli: list[str]) -> list[str]:
    """The file's ``--set`` items with the command line's replacing those of the same NS.PARAM."""
    cli_keys = {item.partition("=")[0].strip() for item in from_cli}
    return [s for s in from_file if s.partition("=")[0] not in cli_keys] + list(from_cli)


def dump(config: dict) -> str:
    """The effective configuration as YAML (``--print-config``); ``--config`` reads it back."""
    import yaml

    clean = json.loads(json.dumps(config))  # plain types only
    return yaml.safe_dump(clean, sort_keys=False, default_flow_style=None, width=100)
