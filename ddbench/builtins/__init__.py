"""The built-in components, each registered through the same hooks a third-party plugin
uses (``ddbench.hookspecs``; the registry loads these modules by name): distillers,
objectives, MI estimators, models, datasets, executors, evaluation protocols and trackers.

Imports: the public face (``ddbench``: ``hookimpl`` and the base classes) and every layer
below it (components, evaluation, data, storage, runtime); never the registry, planning,
analysis, the runner or the CLI.
"""
