"""The ``ddbench`` command line (click): one module per group of commands, each a thin
adapter from options to the layers below (the runner, planning, analysis, storage). The
only package that imports click.

Imports: anything; nothing imports it but ``ddbench.__main__``.
"""

from ddbench.cli import bench, listing, results, run, share  # noqa: F401 - they register the commands
from ddbench.cli.base import cli, main

__all__ = ["cli", "main"]
