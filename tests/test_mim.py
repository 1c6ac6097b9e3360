"""The ``+mim`` objective and ``mim`` alone: gradients, heads, exact lambda = 0, traces,
sweeps, every distiller, bad input, and a third-party estimator."""

import sqlite3
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, rows

from ddbench.builtins import mi_estimators as mi
from ddbench.builtins.models.convnet import ConvNet
from ddbench.builtins.objectives.mim import MIM, MIMParams
from ddbench.context import StepContext
from ddbench.storage import artifacts
from ddbench.storage.store import Store

MIM_TINY = ["--set", "mim.iterations=3", "--set", "dc.iterations=1", "--set", "dsa.iterations=1"]


def fake_ctx(estimator="nce"):
    cls = {c.name: c for c in mi.BUILTIN}[estimator]
    return SimpleNamespace(generator=lambda salt=0: torch.Generator().manual_seed(salt),
                           component=lambda kind, name: cls())


def step_for(net, images, labels, step=0):
    gen = torch.Generator().manual_seed(5)
    real_y = torch.arange(3).repeat_interleave(6)
    real = torch.randn(len(real_y), 1, 8, 8, generator=gen)
    return StepContext(net.features, images, labels, real, real_y, step, 3)


def tiny_net():
    torch.manual_seed(0)
    return ConvNet(ConvNet.Params(width=16, depth=2)).build(1, 3, (8, 8))


@pytest.mark.parametrize("estimator", sorted(c.name for c in mi.BUILTIN))
def test_gradients_reach_the_synthetic_pixels_and_heads_train(estimator):
    net = tiny_net()
    images = torch.randn(6, 1, 8, 8, requires_grad=True)
    labels = torch.arange(3).repeat(2)
    obj = MIM(MIMParams(estimator=estimator, head_lr=0.05))
    obj.setup(fake_ctx(estimator))
    obj.loss(step_for(net, images, labels)).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    before = [q.detach().clone() for q in obj._heads.parameters()]
    assert all(q.grad is not None for q in obj._heads.parameters())
    obj.loss(step_for(net, images, labels, 1))  # applies the previous step's head gradients
    assert all(not torch.equal(a, b) for a, b in zip(before, obj._heads.parameters(), strict=True))
    assert set(obj.scalars()) == {"mi_l1", "mi_l2", "ceiling"}


def test_frozen_heads_and_layer_choice():
    net = tiny_net()
    images = torch.randn(6, 1, 8, 8, requires_grad=True)
    labels = torch.arange(3).repeat(2)
    obj = MIM(MIMParams(train_heads=False, layers=1, head="mlp", pool=1))
    obj.setup(fake_ctx())
    obj.loss(step_for(net, images, labels)).backward()
    assert images.grad.abs().sum() > 0
    before = [q.detach().clone() for q in obj._heads.parameters()]
    obj.loss(step_for(net, images, labels, 1)).backward()
    assert all(torch.equal(a, b) for a, b in zip(before, obj._heads.parameters(), strict=True))
    assert set(obj.scalars()) == {"mi_l2", "ceiling"}
    assert obj.layer_weights(3) == [0.25, 0.5, 1.0]


def synset_images(store, method, params_like="%"):
    db = sqlite3.connect(store)
    (path,) = db.execute("SELECT artifact FROM synsets WHERE method=? AND params LIKE ?",
                         (method, params_like)).fetchone()
    return artifacts.load_synset(store.parent / path).images


def test_lambda_zero_reproduces_dm_exactly_and_mim_changes_it(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dm,dm+mim", "--ipc", "1", "--seeds", "0", "--store", str(store),
              "--set", "mim.lambda=0,0.8", *TINY)
    assert res.code == 0, res.err
    dm = synset_images(store, "dm")
    zero = synset_images(store, "dm+mim[lambda=0.0]")
    full = synset_images(store, "dm+mim[lambda=0.8]")
    assert torch.equal(dm, zero)
    assert (dm - full).abs().max() > 1e-4
    assert "dm+mim[lambda=0.0]" in res.out and "dm+mim[lambda=0.8]" in res.out
    # the MI estimate and its ceiling are stored per iteration for each set
    with _open(store) as db:
        key = db.db.execute("SELECT distill_key FROM synsets WHERE method='dm+mim[lambda=0.8]'").fetchone()[0]
        trace = db.trace(key)
    assert set(trace) == {"mim/mi_l1", "mim/mi_l2", "mim/mi_l3", "mim/ceiling"}
    assert [s for s, _ in trace["mim/mi_l3"]] == [0, 1, 2]
    assert all(v == pytest.approx(2.302585) for _, v in trace["mim/ceiling"])  # log 10 classes


class _open:
    def __init__(self, path):
        self.store = Store(path)

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        self.store.close()


def test_ablation_sweep_is_one_cross_product(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dm+mim", "--ipc", "1", "--seeds", "0", "--store", str(store),
              "--set", "mim.lambda=0.4,0.8", "--set", "mim.estimator=nce,infonce,nwj,mine,jsd",
              "--set", "mim.beta=1,2", *TINY)
    assert res.code == 0, res.err
    got = rows(store)
    assert len(got) == 2 * 5 * 2 and all(r["status"] == "ok" for r in got)
    assert len({r["method"] for r in got}) == 20
    assert "dm+mim[lambda=0.4,estimator=infonce,beta=1.0]" in {r["method"] for r in got}


def test_every_distiller_takes_mim_and_mim_runs_alone(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dc+mim,dsa+mim,mtt+mim,mim", "--ipc", "1", "--seeds", "0",
              "--store", str(store), *MIM_TINY, "--set", "mtt.iterations=2", "--set", "mtt.train_epochs=2",
              "--set", "mtt.max_start_epoch=1", "--set", "mtt.expert_epochs=1", "--set", "mtt.num_experts=1",
              "--set", "mtt.syn_steps=2", *TINY)
    assert res.code == 0, res.err
    got = rows(store)
    assert {r["method"] for r in got} == {"dc+mim", "dsa+mim", "mtt+mim", "mim"}
    assert all(r["status"] == "ok" for r in got), [r["error"] for r in got]
    with _open(store) as db:
        for key, method in db.db.execute("SELECT distill_key, method FROM synsets"):
            trace = db.trace(key)
            assert "mim/mi_l3" in trace and "mim/ceiling" in trace, method
            assert all(abs(v) < 1e6 for _, v in trace["mim/mi_l3"])


def test_bad_estimator_and_parameter_names_fail_before_any_work(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dm+mim", "--ipc", "1", "--store", str(store),
              "--set", "mim.estimator=nope", *TINY)
    assert res.code == 2
    assert "unknown MI estimator 'nope'; valid choices: infonce, jsd, mine, nce, nwj" in res.err
    assert not store.exists()
    res = ddb("run", "--methods", "dm+mim", "--ipc", "1", "--store", str(store), "--set", "mim.lambda_=1", *TINY)
    assert res.code == 2 and "unknown parameter mim.lambda_" in res.err and "lambda" in res.err
    # mim.iterations belongs to the mim distiller: in dm+mim alone it is said to do nothing
    res = ddb("run", "--methods", "dm+mim", "--ipc", "1", "--store", str(store), "--set", "mim.iterations=2",
              *TINY)
    assert res.code == 0 and "--set mim.iterations has no effect" in res.err


THIRD_PARTY = """
import ddbench, torch

class Half(ddbench.MIEstimator):
    \"\"\"InfoNCE halved (a toy third-party estimator).\"\"\"
    name = "half"
    def estimate(self, scores, positive):
        from ddbench.builtins.mi_estimators import InfoNCE
        return InfoNCE().estimate(scores, positive) / 2

@ddbench.hookimpl
def register_mi_estimators(register):
    register(Half)
"""


def test_third_party_estimator_through_the_hook(ddb, tmp_path, fake_plugin):
    fake_plugin("halfmi", THIRD_PARTY)
    res = ddb("list", "mi_estimators")
    assert res.code == 0 and "half" in res.out
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dm+mim", "--ipc", "1", "--store", str(store), "--set", "mim.estimator=half",
              *TINY)
    assert res.code == 0, res.err
    assert rows(store)[0]["status"] == "ok"
