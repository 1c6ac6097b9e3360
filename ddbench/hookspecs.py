"""Hook specifications: the only way components enter ddbench.

Every hook of the ``register_*`` family receives a ``register`` callback and calls it
once per component class it provides (the pattern of simonw's llm): built-ins and
third-party packages use exactly the same hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ddbench")
#: marks a hook implementation (re-exported as ``ddbench.hookimpl`` for plugins)
hookimpl = pluggy.HookimplMarker("ddbench")


@hookspec
def register_distillers(register):
    """Register distiller classes (subclasses of ``ddbench.Distiller``)."""


@hookspec
def register_objectives(register):
    """Register objective classes (auxiliary losses attached with ``base+objective``)."""


@hookspec
def register_mi_estimators(register):
    """Register mutual-information estimator classes (``ddbench.MIEstimator``)."""


@hookspec
def register_models(register):
    """Register model classes (``ddbench.Model``): evaluation/distillation architectures."""


@hookspec
def register_datasets(register):
    """Register dataset classes (``ddbench.DatasetSpec``)."""


@hookspec
def register_executors(register):
    """Register executor classes (``ddbench.Executor``) that run the cells of a sweep."""


@hookspec
def register_protocols(register):
    """Register evaluation protocol classes (``ddbench.ProtocolSpec``): a name that
    ``--set eval.protocol`` and a distiller's ``paper_protocol`` can use."""


@hookspec
def register_trackers(register):
    """Register experiment tracker classes (``ddbench.Tracker``), enabled with ``--track``."""


@hookspec
def cell_finished(record):
    """Called by the driver after each evaluation row is stored (for loggers).

    ``record`` is the ``ddbench.storage.records.ResultRow`` as stored (cell key, method, dataset, ipc,
    seed, model, eval_index, status, accuracy, error, seconds, peak memory, protocol,
    versions, ...), read by attribute; ``record.as_dict()`` gives a plain dict.
    """


@hookspec
def run_started(run, config):
    """Called by the driver once the plan is checked, before any work (for trackers).

    ``run`` is the ``ddbench.storage.records.RunRow`` as stored (run id, command, preset, versions,
    git revision); ``config`` the run's fully resolved configuration as a plain dict (what
    ``ddbench run --print-config`` prints: rerunning it plans the same cells).
    """


@hookspec
def synset_stored(record, artifact, grid, trace):
    """Called by the driver after a distillation's row is stored (ok or failed).

    ``record`` is the ``ddbench.storage.records.SynsetRow``; ``artifact`` and ``grid`` the absolute
    paths of the stored set (.safetensors) and its image grid (.png), or None; ``trace`` the
    scalar series recorded while distilling, ``{name: [(step, value), ...]}`` (MIM's
    estimates, losses).
    """


@hookspec
def run_finished(run, ran, skipped, failed):
    """Called by the driver when the run ends, also when interrupted or failing.

    ``run`` is the ``RunRow`` with its final ``status`` (finished, interrupted); ``ran``,
    ``skipped`` and ``failed`` count its evaluation cells.
    """
