"""The ``ddbench`` command line (click): one module per group of commands."""

from ddbench.cli import bench, listing, results, run, share  # noqa: F401 - they register the commands
from ddbench.cli.base import cli, main

__all__ = ["cli", "main"]
