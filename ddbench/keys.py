"""Keys and hashes: the one place where content becomes a key.

Every key in ddbench (cells, synthetic sets, expert buffers, protocol recipes, cached
datasets) is the sha256 of the same canonical JSON (sorted keys, ``str`` for what JSON
cannot hold). Changing anything here changes every stored key: stored results would no
longer be found, so this module only grows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """Sorted-key JSON of ``obj`` (a dataclass becomes its dict); the text every hash reads."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, default=str)


def digest(obj: Any, n: int = 20) -> str:
    """The first ``n`` hex digits of the sha256 of ``obj``'s canonical JSON (64: all)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def seed_of(*parts: Any) -> int:
    """A 60-bit random seed determined by ``parts`` (never by the clock)."""
    return int(digest(parts, 15), 16)


#: stored parameter columns hold the canonical JSON of the parameters
params_json = canonical_json
