"""MLflow tracker (``--track mlflow``): one MLflow run per ``ddbench run``.

It talks to MLflow through an explicit ``MlflowClient`` and run id, never the fluent API's
global active run, so nothing leaks between runs in one process (tests, notebooks). The
tracking URI is ``--track-uri``, else ``$MLFLOW_TRACKING_URI``, else a file store ``mlruns/``
beside the results store; the experiment is ``$MLFLOW_EXPERIMENT_NAME`` or "ddbench".
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

from ddbench import Tracker, hookimpl
from ddbench.builtins.trackers.common import (
    cell_metrics,
    name,
    require,
    synset_parts,
    table,
    trace_metrics,
)
from ddbench.errors import DDBenchError

#: MLflow's limits on one ``log_batch`` call
MAX_METRICS, MAX_PARAMS = 1000, 100
#: tracking URI schemes MLflow serves (a bare word would become a local folder of that name)
SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")
#: a tracking server gets this long per request and no retries (MLflow's own default is
#: 120 s and 7 retries, minutes of a stalled run): one failure is one warning, the run goes on
HTTP_TIMEOUT_S = 10


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The run's config as MLflow params: nested keys joined by ``.``, lists as ``a,b``
    (as on the command line)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


class MLflowTracker(Tracker):
    """One MLflow run per ``ddbench run`` (``--track mlflow``; ``--track-uri``: the server).

    Params: the config (also ``config.json``); tags: command, preset, git revision,
    versions; metrics: ``acc/``, ``seconds/``, ``peak_mb/`` per cell (step: eval index),
    ``trace/`` per distillation (its steps), ``cells/`` counts; artifacts: the image grids
    (``grids/``) and ``results.json``, the table of the run's rows."""

    name, title = "mlflow", "MLflow"
    takes_uri = True

    def __init__(self, params=None):
        super().__init__(params)
        self.mlflow = require("mlflow", "mlflow")
        folder = Path(self.params.folder).resolve()
        self.uri = self.params.uri or os.environ.get("MLFLOW_TRACKING_URI") or (folder / "mlruns").as_uri()
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ddbench"
        self.client = None
        self.run_id: str | None = None
        self.rows = []

    @classmethod
    def check_uri(cls, uri: str) -> None:
        parsed = urlparse(uri)
        scheme = parsed.scheme.split("+")[0]
        if scheme not in SCHEMES or (scheme in ("http", "https") and not parsed.netloc):
            raise DDBenchError(f"--track-uri {uri!r} is not an MLflow tracking URI; expected one of the schemes "
                               f"{', '.join(SCHEMES)} (e.g. http://host:5000, file:///path/mlruns)")

    def start(self, run, config) -> None:
        if urlparse(self.uri).scheme in ("http", "https"):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        if urlparse(self.uri).scheme in ("", "file"):
            # MLflow 3 puts its file store behind an opt-in; it is the documented default here
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = self.mlflow.MlflowClient(self.uri)
        experiment = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.experiment))
        tags = {"ddbench.run_id": run.run_id, "ddbench.command": run.command, "ddbench.preset": run.preset,
                "ddbench.git_rev": run.git_rev,
                **{f"ddbench.version.{k}": v for k, v in run.json_field("versions").items()}}
        created = self.client.create_run(experiment_id, run_name=run.run_id,
                                         tags={k: str(v) for k, v in tags.items() if v is not None})
        self.run_id = created.info.run_id
        params = [self.mlflow.entities.Param(k, v) for k, v in flat_params(config).items()]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS])
        self.client.log_dict(self.run_id, config, "config.json")

    def log_cell(self, record) -> None:
        self._metrics({record.eval_index: cell_metrics(record)})
        self.rows.append(record)

    def log_synset(self, record, grid, trace) -> None:
        if grid:
            self.client.log_artifact(self.run_id, str(grid), name("grids", *synset_parts(record)))
        self._metrics(trace_metrics(record, trace))

    def finish(self, run, ran, skipped, failed) -> None:
        self.client.set_tag(self.run_id, "ddbench.status", run.status)
        self._metrics({0: {"cells/ran": ran, "cells/skipped": skipped, "cells/failed": failed}})
        if self.rows:
            columns, data = table(self.rows)
            self.client.log_dict(self.run_id, {"columns": columns, "data": data}, "results.json")
        status = "KILLED" if run.status != "finished" else "FAILED" if failed else "FINISHED"
        self.client.set_terminated(self.run_id, status)

    def abandon(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED")

    def _metrics(self, steps: dict[int, dict[str, float]]) -> None:
        now = int(time.time() * 1000)
        metrics = [self.mlflow.entities.Metric(k, float(v), now, step) for step, values in steps.items() for k, v in values.items()]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS])


@hookimpl
def register_trackers(register):
    register(MLflowTracker)
