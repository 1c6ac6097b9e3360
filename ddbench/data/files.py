"""The one-line errors all dataset loaders raise, and the parameters a cache key is made of.

Missing files are an error that names the folder searched and the files expected
(``dataset_error``); a library's exception becomes one line (``one_line``). The flow the
built-in file datasets share is ``ddbench.builtins.datasets.files``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ddbench.errors import DDBenchError


def dataset_error(name: str, message: str) -> DDBenchError:
    return DDBenchError(f"dataset {name!r}: {message}")


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``exc`` as one line of at most ``limit`` characters, for an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def params_dict(params) -> dict[str, Any]:
    """A dataset's parameters as the plain dict the cache key is computed from."""
    if params is None:
        return {}
    return asdict(params)
