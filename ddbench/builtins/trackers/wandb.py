"""Weights & Biases tracker (``--track wandb``): one W&B run per ``ddbench run``.

``reinit="create_new"`` gives each ddbench run its own ``wandb.Run`` without touching the
global ``wandb.run``, so nothing leaks between runs in one process (tests, notebooks). Files go
to ``wandb/`` beside the results store; the project is ``$WANDB_PROJECT`` or "ddbench".
``WANDB_MODE=offline`` needs no login (``wandb sync`` uploads the run later).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ddbench import Tracker, hookimpl
from ddbench.builtins.trackers.common import (
    cell_metrics,
    name,
    require,
    synset_parts,
    table,
    trace_metrics,
)


class WandbTracker(Tracker):
    """One Weights & Biases run per ``ddbench run`` (``--track wandb``).

    Config: the run's config (also ``config.json``) and, under ``ddbench``, run id, git
    revision and versions; notes: the command. History: ``acc/``, ``seconds/``, ``peak_mb/``
    per cell (x: ``eval_index``), ``trace/`` per distillation (x: ``trace_step``), the image
    grids (``grid/``); at the end a ``results`` table of the run's rows and, in the summary,
    the status and cell counts."""

    name = "wandb"

    def __init__(self, params=None):
        super().__init__(params)
        self.wandb = require("wandb", "wandb")
        self.folder = Path(self.params.folder).resolve()
        self.project = os.environ.get("WANDB_PROJECT") or "ddbench"
        self.run = None
        self.rows = []

    def start(self, run, config) -> None:
        meta = {"run_id": run.run_id, "preset": run.preset, "git_rev": run.git_rev,
                "versions": run.json_field("versions")}
        # console capture off: the progress display is not a log, the results are tracked
        self.run = self.wandb.init(project=self.project, dir=self.folder, name=run.run_id, notes=run.command,
                              config={**config, "ddbench": meta}, reinit="create_new",
                              settings=self.wandb.Settings(console="off"))
        for prefix in ("acc", "seconds", "peak_mb"):
            self.run.define_metric(f"{prefix}/*", step_metric="eval_index")
        self.run.define_metric("trace/*", step_metric="trace_step")
        # files in the run's folder are uploaded with it
        (Path(self.run.dir) / "config.json").write_text(json.dumps(config, indent=2))

    def log_cell(self, record) -> None:
        self.run.log({"eval_index": record.eval_index, **cell_metrics(record)})
        self.rows.append(record)

    def log_synset(self, record, grid, trace) -> None:
        if grid:
            self.run.log({name("grid", *synset_parts(record)): self.wandb.Image(str(grid), caption=record.distill_key)})
        for step, values in trace_metrics(record, trace).items():
            self.run.log({"trace_step": step, **values})

    def finish(self, run, ran, skipped, failed) -> None:
        if self.rows:
            columns, data = table(self.rows)
            self.run.log({"results": self.wandb.Table(columns=columns, data=data, allow_mixed_types=True)})
        self.run.summary.update({"status": run.status, "cells/ran": ran, "cells/skipped": skipped,
                                 "cells/failed": failed})
        self.run.finish(exit_code=0 if run.status == "finished" and not failed else 1)

    def abandon(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)


@hookimpl
def register_trackers(register):
    register(WandbTracker)
