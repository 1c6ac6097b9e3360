"""Soft and teacher labels through the evaluation, cached teachers, and DD-Ranking's scores."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from conftest import rows

from ddbench.analysis import scores
from ddbench.evaluation import labels
from ddbench.evaluation.protocol import Protocol, ProtocolParams
from ddbench.synthetic import SyntheticSet

SMALL = ["--datasets", "digits", "--ipc", "1", "--seeds", "0", "--set", "eval.epochs=3",
         "--set", "eval.num_eval=2", "--set", "eval.teacher_epochs=2", "--quiet"]


def test_kl_and_sce_losses_match_their_definitions():
    torch.manual_seed(0)
    student, target = torch.randn(5, 4), torch.randn(5, 4)
    t = 2.0
    p = F.softmax(target / t, 1)
    log_q = F.log_softmax(student / t, 1)
    kl = (p * (p.log() - log_q)).sum(1).mean()
    assert torch.allclose(labels.kl_loss(student, target, t), kl, atol=1e-6)
    assert torch.allclose(labels.sce_loss(student, target, t), -(p * log_q).sum(1).mean(), atol=1e-6)
    # probabilities become logits by log: tempering them at T=1 gives them back
    probs = F.softmax(torch.randn(5, 4), 1)
    s = SyntheticSet(torch.zeros(5, 1, 2, 2), probs.argmax(1), soft_labels=probs)
    assert torch.allclose(F.softmax(labels.as_logits(s), 1), probs, atol=1e-6)


def test_hard_label_protocols_keep_their_hash_and_label():
    """Stored keys depend on it: labels=hard (and the soft-only fields) stay out of the hash."""
    hard = Protocol(ProtocolParams(epochs=100, num_eval=2), "small")
    varied = Protocol(ProtocolParams(epochs=100, num_eval=2, temperature=4.0, teacher="mlp"), "small")
    assert hard.hash == varied.hash and hard.label == "ddbench-eval/v1"
    assert "labels" not in hard.as_dict() and "temperature" not in hard.as_dict()
    soft = Protocol(ProtocolParams(epochs=100, num_eval=2, labels="soft"), "small")
    assert soft.hash != hard.hash and soft.label == "ddbench-eval/v1+soft"
    hotter = Protocol(ProtocolParams(epochs=100, num_eval=2, labels="soft", temperature=4.0), "small")
    assert hotter.hash != soft.hash


def test_teacher_labels_train_a_cached_teacher_once(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    args = ["run", "--methods", "random", *SMALL, "--set", "eval.labels=teacher", "--store", str(store)]
    first = ddb(*args)
    assert first.code == 0, first.err
    assert "trained teacher convnet (2 epochs)" in first.err
    got = rows(store)
    assert len(got) == 2 and {r["protocol"] for r in got} == {"ddbench-eval/v1+teacher"}
    assert all(r["status"] == "ok" for r in got)
    listed = ddb("list", "teachers", "--data-root", "datasets")
    assert "digits [clean] convnet: 2 epochs" in listed.out
    # another method (and a new store) with the same teacher recipe reuses it
    again = ddb("run", "--methods", "dm", *SMALL, "--set", "dm.iterations=2", "--set", "eval.labels=teacher",
                "--store", str(tmp_path / "other.sqlite"))
    assert again.code == 0, again.err
    assert "trained teacher" not in again.err and "teacher convnet (2 epochs) for digits: present" in again.err


def test_soft_labels_for_a_set_without_them_come_from_the_teacher(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "random", *SMALL, "--set", "eval.labels=hard,soft", "--set", "eval.soft_loss=sce",
              "--store", str(store))
    assert res.code == 0, res.err
    by = defaultdict(list)
    for r in rows(store):
        by[r["protocol"]].append(r)
    assert sorted(by) == ["ddbench-eval/v1", "ddbench-eval/v1+soft"]
    params = json.loads(by["ddbench-eval/v1+soft"][0]["protocol_params"])
    assert params["labels"] == "soft" and params["soft_loss"] == "sce"


def test_an_unknown_teacher_is_a_one_line_error(ddb, tmp_path):
    res = ddb("run", "--methods", "random", *SMALL, "--set", "eval.labels=teacher", "--set", "eval.teacher=nosuch",
              "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 2 and "unknown model 'nosuch'" in res.err and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "r.sqlite").exists()


SOFT_PLUGIN = """
import torch
from ddbench import hookimpl
from ddbench.components import Distiller
from ddbench.synthetic import SyntheticSet
from ddbench.data.sampling import sample_per_class


class Smooth(Distiller):
    '''Random real images with label smoothing as soft labels (a test plugin).'''
    name = "smooth"

    def gives_soft_labels(self):
        return True

    def distill(self, ctx):
        x, y = sample_per_class(ctx.data, ctx.ipc, ctx.generator())
        soft = torch.full((len(y), ctx.data.num_classes), 0.1 / (ctx.data.num_classes - 1))
        soft[torch.arange(len(y)), y] = 0.9
        return SyntheticSet(x.clone(), y, soft_labels=soft)


@hookimpl
def register_distillers(register):
    register(Smooth)
"""


def test_a_plugin_returns_soft_labels_and_they_are_trained_on(ddb, tmp_path, fake_plugin):
    fake_plugin("smooth", SOFT_PLUGIN)
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "smooth", *SMALL, "--set", "eval.labels=soft", "--store", str(store))
    assert res.code == 0, res.err
    assert "teacher" not in res.err  # its own soft labels: no teacher planned or trained
    from ddbench.storage.artifacts import load_synset

    (art,) = (tmp_path / "artifacts").glob("*.safetensors")
    synset = load_synset(art)
    assert synset.soft_labels is not None and synset.soft_labels.shape == (10, 10)
    assert float(synset.soft_labels.max()) == pytest.approx(0.9)


def test_scores_match_a_hand_computation(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dm", *SMALL, "--set", "dm.iterations=3", "--scores", "--store", str(store))
    assert res.code == 0, res.err
    assert "DD-Ranking scores" in res.out
    acc = defaultdict(dict)  # (method, labels, dsa) -> eval index -> accuracy
    for r in rows(store):
        p = json.loads(r["protocol_params"])
        acc[(r["method"], p.get("labels", "hard"), p["dsa"])][r["eval_index"]] = r["accuracy"]
    assert set(acc) == {("dm", "hard", True), ("dm", "hard", False), ("random", "hard", True),
                        ("random", "hard", False), ("full", "hard", True)}
    real = statistics.fmean(acc[("full", "hard", True)].values())

    def norm(x):
        return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))

    lrs = [norm(0.5 * (acc[("dm", "hard", True)][i] - acc[("random", "hard", True)][i])
                - 0.5 * (real - acc[("dm", "hard", True)][i])) for i in (0, 1)]
    ars = [norm(0.5 * (acc[("dm", "hard", True)][i] - acc[("random", "hard", True)][i])
                + 0.5 * (acc[("dm", "hard", False)][i] - acc[("random", "hard", False)][i])) for i in (0, 1)]
    report = json.loads(ddb("report", "--store", str(store), "--format", "json").out)
    (got,) = report["scores"]
    assert got["method"] == "dm" and got["labels"] == "hard" and got["n"] == 2
    assert got["lrs"][0] == pytest.approx(statistics.fmean(lrs), abs=1e-9)
    assert got["lrs"][1] == pytest.approx(statistics.stdev(lrs), abs=1e-9)
    assert got["ars"][0] == pytest.approx(statistics.fmean(ars), abs=1e-9)
    assert got["hlr"] == pytest.approx(statistics.fmean(real - v for v in acc[("dm", "hard", True)].values()))
    # DD-Ranking's weight: w = 1 scores the gain over random alone
    weighted = json.loads(ddb("report", "--store", str(store), "--format", "json", "--lrs-weight", "1").out)
    only_ior = [norm(acc[("dm", "hard", True)][i] - acc[("random", "hard", True)][i]) for i in (0, 1)]
    assert weighted["scores"][0]["lrs"][0] == pytest.approx(statistics.fmean(only_ior), abs=1e-9)


def test_scores_say_what_is_missing():
    from ddbench.analysis.results import CellId, Sample, Table

    params = {"name": "ddbench-eval", "version": 1, "dsa": True}
    t = Table("ddbench-eval/v1", "h", params, "env", ["random", "dm", "full"])
    cell = CellId("digits", "clean", "1", "convnet")
    t.cells[cell] = {"random": Sample(values={0: 0.5, 1: 0.6}), "dm": Sample(values={0: 0.7, 1: 0.8})}
    assert scores.compute([t]) == []  # neither score computable: no row (a plain run's report)
    t.cells[CellId("digits", "clean", "all", "convnet")] = {"full": Sample(values={0: 0.9, 1: 0.9})}
    (s,) = scores.compute([t])
    assert s.ior == pytest.approx(0.2) and s.hlr == pytest.approx(0.15)
    # per evaluation run (HLR against the mean of full), then averaged: runs 0 and 1
    per_run = [scores.normalise(0.5 * 0.2 - 0.5 * (0.9 - 0.7)), scores.normalise(0.5 * 0.2 - 0.5 * (0.9 - 0.8))]
    assert s.lrs[0] == pytest.approx(statistics.fmean(per_run))
    assert s.ars is None and "ARS needs the cells without augmentation" in s.missing


def test_check_compares_soft_label_numbers_with_soft_label_results_only(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    for mode in ("hard", "teacher"):  # one run each: the same cell (no sweep label on the model)
        res = ddb("run", "--methods", "random", *SMALL, "--set", f"eval.labels={mode}", "--store", str(store))
        assert res.code == 0, res.err
    by_protocol = defaultdict(list)
    for r in rows(store):
        by_protocol[r["protocol"]].append(100 * r["accuracy"])
    soft = statistics.fmean(by_protocol["ddbench-eval/v1+teacher"])
    hard = statistics.fmean(by_protocol["ddbench-eval/v1"])
    assert f"{soft:.1f}" != f"{hard:.1f}"  # else the test could not tell them apart
    csv = tmp_path / "published.csv"
    head = "method,dataset,conditions,ipc,model,mean,std,n,labels,protocol\n"
    for mode, want in (("soft", soft), ("hard", hard)):
        csv.write_text(head + f"random,digits,clean,1,convnet,{want:.2f},0.1,5,{mode},\n")
        res = ddb("check", str(csv), "--store", str(store))
        assert res.code == 0, res.out + res.err
        assert re.search(rf"{want:.1f} ± [\d.]+ \(n=2\)", res.out), res.out  # ours: the matching label mode


def test_one_teacher_serves_students_with_and_without_augmentation(ddb, tmp_path):
    res = ddb("run", "--methods", "random", *SMALL, "--set", "eval.labels=teacher", "--set", "eval.dsa=true,false",
              "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 0, res.err
    assert res.err.count("trained teacher") == 1 and len(rows(tmp_path / "r.sqlite")) == 4


HOOKS_PLUGIN = """
import json, os
from ddbench import hookimpl

def _log(*what):
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(json.dumps(what) + "\\n")

@hookimpl
def run_started(run, config):
    _log("started", run.run_id)

@hookimpl
def run_finished(run, ran, skipped, failed):
    _log("finished", run.status, ran)
"""


def test_run_finished_is_called_when_a_teacher_cannot_be_trained(ddb, tmp_path, fake_plugin, monkeypatch):
    """Trackers close their runs even when the run stops before its first job (teacher training)."""
    from ddbench.evaluation.teacher import Teacher

    log = tmp_path / "hooks.log"
    monkeypatch.setenv("HOOK_LOG", str(log))
    fake_plugin("hooks", HOOKS_PLUGIN)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Teacher, "build", interrupted)
    res = ddb("run", "--methods", "random", *SMALL, "--set", "eval.labels=teacher", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 130
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e[0] for e in events] == ["started", "finished"] and events[1][1:] == ["interrupted", 0]
