"""One job as it runs inside a worker: distil (unless a stored set is given), then evaluate
its pending cells (``tasks``), yielding typed events (``events``) that the driver alone
turns into stored rows.

Imports: everything a job needs below it (plan, components, evaluation, data, storage,
runtime); never the registry's plugins by name, analysis, the runner or the CLI.
"""
