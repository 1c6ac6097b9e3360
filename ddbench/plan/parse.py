"""Parsing what the user typed: method specs, ``--set`` items, comma lists, model specs.

Each input is parsed once, here, into a value the rest of planning uses; an empty item
in a comma list (``dm,,mtt``) is an error, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddbench import params as P
from ddbench.errors import DDBenchError
from ddbench.registry import Entry, Registry


@dataclass(frozen=True)
class MethodSpec:
    text: str
    base: str
    objectives: tuple[str, ...]
    #: the argument of a distiller that takes one (``file:PATH``): everything after the colon
    arg: str | None = None

    @property
    def key_text(self) -> str:
        """The method in result keys: without the argument, which reaches the key through
        the distiller's parameters (a file's content hash, not its path)."""
        return self.base if self.arg is not None else self.text


def parse_method(text: str, registry: Registry) -> MethodSpec:
    name, sep, arg = text.partition(":")
    if sep:  # ``file:PATH``: the rest is the argument, '+' included
        entry = registry.get("distillers", name.strip())
        takes = getattr(entry.cls, "argument", None)
        if not takes:
            raise DDBenchError(f"method {name.strip()!r} takes no argument; got {text!r}")
        if not arg.strip():
            raise DDBenchError(f"method {text!r}: {name.strip()} needs a {takes}, e.g. {name.strip()}:sets/mine.pt")
        return MethodSpec(text, name.strip(), (), arg.strip())
    parts = [p.strip() for p in text.split("+")]
    if not all(parts):
        raise DDBenchError(f"malformed method {text!r}: expected base[+objective...], e.g. dm+mim")
    takes = getattr(registry.get("distillers", parts[0]).cls, "argument", None)
    if takes:
        raise DDBenchError(f"method {parts[0]!r} needs a {takes}: {parts[0]}:{takes.upper()} "
                           f"(e.g. {parts[0]}:sets/mine.pt), and takes no objectives")
    for obj in parts[1:]:
        registry.get("objectives", obj)
    if len(set(parts[1:])) != len(parts[1:]):
        raise DDBenchError(f"method {text!r} attaches the same objective twice")
    return MethodSpec(text, parts[0], tuple(parts[1:]))



def parse_sets(items: list[str]) -> dict[tuple[str, str], list[str]]:
    """``["dm.lr_img=0.5,1"]`` -> ``{("dm", "lr_img"): ["0.5", "1"]}``."""
    out: dict[tuple[str, str], list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        ns, dot, name = key.strip().partition(".")
        values = [v.strip() for v in value.split(",")]
        if not sep or not dot or not ns or not name or not all(values):
            raise DDBenchError(
                f"malformed --set {item!r}: expected NAME.PARAM=VALUE[,VALUE...], e.g. dm.lr_img=0.5,1"
            )
        if (ns, name) in out:
            raise DDBenchError(f"--set {ns}.{name} is given twice")
        out[(ns, name)] = values
    return out




def split_list(text: str, what: str) -> list[str]:
    """``"a, b,a"`` -> ``["a", "b"]`` (duplicates dropped); ``what`` (e.g. ``--methods``)
    names the option in the error for an empty item or an empty list."""
    items = [v.strip() for v in text.split(",")]
    if not any(items):
        raise DDBenchError(f"{what} is empty; expected a comma list, e.g. {what} a,b")
    if not all(items):
        raise DDBenchError(f"{what} {text!r} has an empty item; expected a comma list without empty items")
    return list(dict.fromkeys(items))


def parse_int_list(text: str, what: str, minimum: int) -> list[int]:
    """``"1,10"`` -> ``[1, 10]``; every value an integer >= ``minimum``."""
    items = split_list(text, f"--{what}")
    try:
        values = [int(v) for v in items]
    except ValueError:
        raise DDBenchError(f"invalid {what} {text!r}: expected integers, e.g. 1,10") from None
    for v in values:
        if not minimum <= v <= P.INT64[1]:
            raise DDBenchError(f"invalid {what} {v}: must be >= {minimum} and fit a 64-bit integer "
                               f"(<= {P.INT64[1]})")
    return list(dict.fromkeys(values))


def model_entry(registry: Registry, spec: str) -> tuple[Entry, str | None]:
    """``"timm:resnet50"`` -> (the ``timm`` entry, ``"resnet50"``); ``"convnet"`` -> (entry, None)."""
    name, sep, arg = spec.partition(":")
    entry = registry.get("models", name)
    takes = getattr(entry.cls, "argument", None)
    if takes and not arg:
        raise DDBenchError(f"model {name!r} needs an argument: {name}:{takes.upper()} (e.g. {name}:resnet50)")
    if not takes and sep:
        raise DDBenchError(f"model {name!r} takes no argument; got {spec!r}")
    return entry, (arg or None)


