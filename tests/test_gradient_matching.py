"""DC and DSA: the reference matching distance, schedule, and that they (and MTT) beat random."""

from __future__ import annotations

import statistics

import pytest
import torch
from conftest import rows

from ddbench.builtins.distillers.gradient_matching import (
    REFERENCE_LOOPS,
    layer_distance,
    loops_for,
    match_loss,
)


def test_distance_is_zero_for_identical_gradients_and_positive_otherwise():
    torch.manual_seed(0)
    grads = [torch.randn(8, 3, 3, 3), torch.randn(8), torch.randn(10, 32)]
    for metric in ("ours", "mse", "cos"):
        assert float(match_loss(grads, grads, metric)) == pytest.approx(0, abs=1e-5)
        other = [g + 0.5 * torch.randn_like(g) for g in grads]
        assert float(match_loss(other, grads, metric)) > 1e-3


def test_one_dimensional_parameters_contribute_nothing():
    assert float(layer_distance(torch.randn(16), torch.randn(16))) == 0.0
    w = [torch.randn(4, 6), torch.randn(4)]
    changed_bias = [w[0], torch.randn(4)]
    assert float(match_loss(changed_bias, w, "ours")) == pytest.approx(0, abs=1e-5)


def test_layer_distance_is_the_sum_over_output_rows():
    gr = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gs = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # row 0 orthogonal (1), row 1 parallel (0)
    assert float(layer_distance(gr, gs)) == pytest.approx(1.0, abs=1e-5)
    conv = torch.randn(3, 2, 3, 3)
    assert float(layer_distance(conv, -conv)) == pytest.approx(6.0, abs=1e-4)  # 3 rows x 2


def test_reference_schedule_and_the_rule_outside_it():
    for ipc, loops in REFERENCE_LOOPS.items():
        assert loops_for(ipc) == loops
    assert loops_for(5) == (1, 1)      # nearest is 1 (|5-1| < |5-10|)
    assert loops_for(15) == (10, 50)   # tie between 10 and 20: the smaller
    assert loops_for(100) == (50, 10)


def test_dc_dsa_and_mtt_beat_random_at_ipc_1_on_digits(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    methods = ("random", "dc", "dsa", "mtt")
    res = ddb("run", "--methods", ",".join(methods), "--ipc", "1", "--seeds", "0,1,2",
              "--set", "eval.epochs=60", "--set", "eval.num_eval=1", "--store", str(store), "--quiet")
    assert res.code == 0, res.err
    acc = {m: statistics.fmean(r["accuracy"] for r in rows(store, f"method='{m}'")) for m in methods}
    assert all(acc[m] > acc["random"] + 0.03 for m in methods[1:]), acc


def test_batch_norm_networks_run(ddb, tmp_path):
    res = ddb("run", "--methods", "dc", "--ipc", "2", "--seeds", "0", "--set", "dc.iterations=1",
              "--set", "dc.outer_loop=2", "--set", "dc.inner_loop=1", "--set", "convnet.norm=batchnorm",
              "--set", "eval.epochs=2", "--set", "eval.num_eval=1", "--store", str(tmp_path / "r.sqlite"), "--quiet")
    assert res.code == 0, res.err
    assert rows(tmp_path / "r.sqlite")[0]["status"] == "ok"
