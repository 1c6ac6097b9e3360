"""Typed component parameters: dataclass fields parsed from ``--set`` strings and checked.

A component declares ``Params`` as a dataclass; its field types drive parsing
(bool/int/float/str and ``Literal[...]`` choices) and ``ddbench list`` shows the defaults.
Constraints sit on the type as ``typing.Annotated`` metadata: ``annotated_types`` bounds
(``Annotated[int, Ge(1)]``, ``Annotated[float, Interval(ge=0, le=1)]``, ``MultipleOf``,
``MinLen``/``MaxLen``, ``Predicate``) or a :class:`Check` for a rule that is not a range.
A float must also be finite unless it carries :class:`AllowNonFinite`. Every ``--set``
value (:func:`parse_value`) and every built instance, defaults and presets included
(:func:`build`), is checked at planning; a violation is a one-line ``DDBenchError``.
A field named after a Python keyword plus ``_`` (``lambda_``) is ``lambda`` everywhere
outside Python: on the command line, in stored parameters and in keys.
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
import math
import operator
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types as at

from ddbench.errors import DDBenchError

#: the range of every stored integer (SQLite INTEGER, torch int64)
INT64 = (-(2**63), 2**63 - 1)

__all__ = [
    "AllowNonFinite",
    "Check",
    "ParamInfo",
    "as_dict",
    "build",
    "fields",
    "parse_overrides",
    "parse_value",
    "public",
    "validate",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    name: str
    type_name: str
    default: Any
    choices: tuple | None
    help: str
    #: what values are allowed beyond the type (">= 1", "> 0", ...; "" if anything is)
    constraint: str = ""


@dataclasses.dataclass(frozen=True)
class Check:
    """A constraint that is not a range: ``predicate(value)`` must be true.

    ``allowed`` says what is allowed, shown as ``expected ALLOWED`` in the error and by
    ``ddbench list``: ``Annotated[str, Check(str.isidentifier, "an identifier")]``.
    A predicate that raises counts as false.
    """

    predicate: Callable[[Any], bool]
    allowed: str


@dataclasses.dataclass(frozen=True)
class AllowNonFinite:
    """Marks a float parameter that may be NaN or infinite: ``Annotated[float, AllowNonFinite()]``
    (every other float parameter must be finite)."""


#: annotated_types bound -> (symbol, comparison, attribute holding the bound)
_BOUNDS = {
    at.Gt: (">", operator.gt, "gt"),
    at.Ge: (">=", operator.ge, "ge"),
    at.Lt: ("<", operator.lt, "lt"),
    at.Le: ("<=", operator.le, "le"),
}
_SUPPORTED = (*_BOUNDS, at.MultipleOf, at.MinLen, at.MaxLen, at.Predicate)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A field's type taken apart: what it parses as and what its values must satisfy."""

    base: Any  # the type without Annotated and None
    optional: bool
    bounds: tuple  # annotated_types metadata (see _SUPPORTED), checked in order
    checks: tuple[Check, ...]
    finite: bool


def _is_union(tp) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def _spec(tp, where: str) -> _Spec:
    """Split ``tp`` (``Annotated`` and ``| None`` at any nesting) into a :class:`_Spec`."""
    meta: list = []
    optional = False
    while True:
        if get_origin(tp) is Annotated:
            tp, *extra = get_args(tp)
            meta.extend(extra)
        elif _is_union(tp):
            args = [a for a in get_args(tp) if a is not type(None)]
            optional = optional or len(args) < len(get_args(tp))
            tp = args[0]
        else:
            break
    flat: list = []
    for m in meta:
        flat.extend(m if isinstance(m, at.GroupedMetadata) else [m])
    bounds, checks, finite = [], [], tp is float
    for m in flat:
        if isinstance(m, Check):
            checks.append(m)
        elif isinstance(m, AllowNonFinite):
            finite = False
        elif isinstance(m, at.Predicate) and m.func is math.isfinite:
            finite = True
        elif isinstance(m, _SUPPORTED):
            bounds.append(m)
        elif isinstance(m, at.BaseMetadata):
            raise DDBenchError(f"parameter {where} declares a constraint ddbench cannot check: {m!r}")
        # any other metadata (documentation, other libraries' markers) is not a constraint
    return _Spec(tp, optional, tuple(bounds), tuple(checks), finite)


@functools.cache
def _hints(params_cls) -> dict[str, Any]:
    """Field name -> annotated type (``Annotated`` kept) of a ``Params`` dataclass."""
    return typing.get_type_hints(params_cls, include_extras=True)


def _phrase(m) -> str:
    if type(m) in _BOUNDS:
        symbol, _, attr = _BOUNDS[type(m)]
        return f"{symbol} {getattr(m, attr)}"
    if isinstance(m, at.MultipleOf):
        return f"a multiple of {m.multiple_of}"
    if isinstance(m, at.MinLen):
        return f"of length >= {m.min_length}"
    if isinstance(m, at.MaxLen):
        return f"of length <= {m.max_length}"
    func = m.func
    return f"accepted by {getattr(func, '__qualname__', None) or repr(func)}"


def _holds(m, value) -> bool:
    try:
        if type(m) in _BOUNDS:
            _, compare, attr = _BOUNDS[type(m)]
            return bool(compare(value, getattr(m, attr)))
        if isinstance(m, at.MultipleOf):
            return value % m.multiple_of == 0
        if isinstance(m, at.MinLen):
            return len(value) >= m.min_length
        if isinstance(m, at.MaxLen):
            return len(value) <= m.max_length
        return bool(m.func(value))
    except Exception:  # a value the rule cannot judge (a str against a number) fails it
        return False


def _passes(check: Check, value) -> bool:
    try:
        return bool(check.predicate(value))
    except Exception:
        return False


def _is_finite(value) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False


def _allowed(spec: _Spec) -> str:
    """The constraint text of ``ParamInfo`` (without the implicit finiteness of floats)."""
    parts = [" and ".join(_phrase(b) for b in spec.bounds)] if spec.bounds else []
    return "; ".join(parts + [c.allowed for c in spec.checks])


def _check(spec: _Spec, value, where: str) -> None:
    """Raise the one-line error if ``value`` breaks ``spec``'s constraints."""
    if value is None and spec.optional:
        return
    infinite = spec.finite and not _is_finite(value)
    out_of_range = not all(_holds(b, value) for b in spec.bounds)
    failed = [c for c in spec.checks if not _passes(c, value)]
    if not (infinite or out_of_range or failed):
        return
    parts = []
    if infinite or out_of_range:
        must = (["finite"] if infinite else []) + [_phrase(b) for b in spec.bounds]
        parts.append("must be " + " and ".join(must))
    parts += [f"expected {c.allowed}" for c in failed]
    raise DDBenchError(f"invalid value {value!r} for {where}: {'; '.join(parts)}")


def _check_type(spec: _Spec, value, where: str) -> None:
    """A built value must have its field's type (a preset's ``"50"`` for an int is an error)."""
    if value is None and spec.optional:
        return
    if get_origin(spec.base) is Literal:
        if value not in get_args(spec.base):
            choices = ", ".join(map(str, get_args(spec.base)))
            raise DDBenchError(f"invalid value {value!r} for {where}; valid choices: {choices}")
        return
    accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(spec.base)
    if accepted is not None and (not isinstance(value, accepted) or (spec.base is not bool and isinstance(value, bool))):
        raise DDBenchError(f"invalid value {value!r} for {where}: expected {spec.base.__name__}")
    if spec.base is int and not INT64[0] <= value <= INT64[1]:
        raise DDBenchError(f"invalid value {value} for {where}: must fit a 64-bit integer "
                           f"({INT64[0]}..{INT64[1]}), as the store and torch hold it")


def public(name: str) -> str:
    """``lambda_`` -> ``lambda``: the user-facing name of a field."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def _field(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) else name


def fields(params_cls) -> list[ParamInfo]:
    """Describe every parameter of a ``Params`` dataclass (name, type, default, choices,
    constraint)."""
    if params_cls is None:
        return []
    hints = typing.get_type_hints(params_cls)  # Annotated stripped: the plain type
    out = []
    for f in dataclasses.fields(params_cls):
        tp = hints[f.name]
        choices = tuple(get_args(tp)) if get_origin(tp) is Literal else None
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        constraint = _allowed(_spec(_hints(params_cls)[f.name], public(f.name)))
        out.append(ParamInfo(public(f.name), _type_name(tp), default, choices,
                             f.metadata.get("help", ""), constraint))
    return out


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return "choice"
    return getattr(tp, "__name__", str(tp))


def parse_value(tp, text: str, where: str):
    """Parse one ``--set`` value for a field of type ``tp`` (``Annotated`` constraints
    checked); ``where`` (``ns.param``) names it in errors."""
    spec = _spec(tp, where)
    value = _parse(spec, text, where)
    _check_type(spec, value, where)  # an int beyond 64 bits, however it is spelled
    _check(spec, value, where)
    return value


def _parse(spec: _Spec, text: str, where: str):
    tp = spec.base
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == text:
                return c
        raise DDBenchError(
            f"invalid value {text!r} for {where}; valid choices: {', '.join(map(str, choices))}"
        )
    if spec.optional and text.lower() in {"none", "null"}:
        return None
    try:
        if tp is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if tp is int:
            try:  # exactly, however large (the 64-bit bound is checked with the constraints)
                return int(text)
            except ValueError:
                f = float(text)  # 1e3
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
    """Instantiate ``params_cls`` with already-parsed ``overrides``, then :func:`validate` it:
    unknown keys, and values (defaults and presets too) against the declaration, are errors."""
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
    params = params_cls(**{_field(k): v for k, v in overrides.items()})
    validate(params, where)
    return params


def validate(params, where: str) -> None:
    """Check every field of a ``Params`` instance against its declared type and constraints
    (for an instance changed after :func:`build`, e.g. with ``dataclasses.replace``)."""
    if params is None:
        return
    hints = _hints(type(params))
    for f in dataclasses.fields(params):
        name = f"{where}.{public(f.name)}"
        spec = _spec(hints[f.name], name)
        value = getattr(params, f.name)
        _check_type(spec, value, name)
        _check(spec, value, name)


def parse_overrides(params_cls, raw: dict[str, str], where: str) -> dict[str, Any]:
    """Parse string overrides for ``params_cls`` (checking names, types and constraints)."""
    if params_cls is None:
        build(None, raw, where)  # raises when anything is set
        return {}
    hints = _hints(params_cls)
    out = {}
    for key, text in raw.items():
        if _field(key) not in hints or key != public(_field(key)):
            build(params_cls, {key: None}, where)  # raises the "unknown parameter" error
        out[key] = parse_value(hints[_field(key)], text, f"{where}.{key}")
    return out


def as_dict(params) -> dict[str, Any]:
    return {} if params is None else {public(k): v for k, v in dataclasses.asdict(params).items()}
