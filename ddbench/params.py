"""Typed component parameters: dataclass fields parsed from ``--set`` strings.

A component declares ``Params`` as a dataclass; its field types drive parsing
(bool/int/float/str and ``Literal[...]`` choices) and ``ddbench list`` shows the defaults.
A field named after a Python keyword plus ``_`` (``lambda_``) is ``lambda`` everywhere
outside Python: on the command line, in stored parameters and in keys.
"""

from __future__ import annotations

import dataclasses
import keyword
import typing
from typing import Any, Literal, get_args, get_origin

from ddbench.errors import DDBenchError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    name: str
    type_name: str
    default: Any
    choices: tuple | None
    help: str


def public(name: str) -> str:
    """``lambda_`` -> ``lambda``: the user-facing name of a field."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def _field(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) else name


def fields(params_cls) -> list[ParamInfo]:
    """Describe every parameter of a ``Params`` dataclass (name, type, default, choices)."""
    if params_cls is None:
        return []
    hints = typing.get_type_hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        tp = hints[f.name]
        choices = tuple(get_args(tp)) if get_origin(tp) is Literal else None
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(ParamInfo(public(f.name), _type_name(tp), default, choices, f.metadata.get("help", "")))
    return out


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return "choice"
    return getattr(tp, "__name__", str(tp))


def parse_value(tp, text: str, where: str):
    """Parse one ``--set`` value for a field of type ``tp``; ``where`` names it in errors."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == text:
                return c
        raise DDBenchError(
            f"invalid value {text!r} for {where}; valid choices: {', '.join(map(str, choices))}"
        )
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in get_args(tp) if a is not type(None)]
        if text.lower() in {"none", "null"}:
            return None
        return parse_value(args[0], text, where)
    try:
        if tp is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if tp is int:
            f = float(text)
            if not f.is_integer():
                raise ValueError
            return int(f)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        raise DDBenchError(f"invalid value {text!r} for {where}: expected {tp.__name__}") from None
    raise DDBenchError(f"parameter {where} of type {tp} cannot be set from the command line")


def build(params_cls, overrides: dict[str, Any], where: str):
    """Instantiate ``params_cls`` with already-parsed ``overrides``; unknown keys are an error."""
    if params_cls is None:
        if overrides:
            raise DDBenchError(f"unknown parameter {where}.{next(iter(overrides))!r}; {where} takes no parameters")
        return None
    valid = {public(f.name) for f in dataclasses.fields(params_cls)}
    for key in overrides:
        if key not in valid:
            raise DDBenchError(
                f"unknown parameter {where}.{key}; valid parameters of {where}: {', '.join(sorted(valid))}"
            )
    return params_cls(**{_field(k): v for k, v in overrides.items()})


def parse_overrides(params_cls, raw: dict[str, str], where: str) -> dict[str, Any]:
    """Parse string overrides for ``params_cls`` (checking names and types)."""
    if params_cls is None:
        build(None, raw, where)  # raises when anything is set
        return {}
    hints = typing.get_type_hints(params_cls)
    out = {}
    for key, text in raw.items():
        if _field(key) not in hints or key != public(_field(key)):
            build(params_cls, {key: None}, where)  # raises the "unknown parameter" error
        out[key] = parse_value(hints[_field(key)], text, f"{where}.{key}")
    return out


def as_dict(params) -> dict[str, Any]:
    return {} if params is None else {public(k): v for k, v in dataclasses.asdict(params).items()}
