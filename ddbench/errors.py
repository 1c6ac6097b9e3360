"""Errors the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class DDBenchError(Exception):
    """Bad input or configuration: shown to the user as one line, exit code 2."""

    exit_code = 2


def choices_error(what: str, value: object, valid) -> DDBenchError:
    """'unknown dataset 'foo'; valid choices: a, b, c' — the shape of every lookup error."""
    valid = sorted(valid)
    listed = ", ".join(valid) if valid else "(none registered)"
    return DDBenchError(f"unknown {what} {value!r}; valid choices: {listed}")
