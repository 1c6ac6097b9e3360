"""MTT: the trajectory loss, gradients through the unroll, expert caching, presets."""

from __future__ import annotations

import sqlite3
import weakref

import pytest
import torch
from conftest import rows

from ddbench.builtins.distillers.mtt import (
    MTT,
    PAPER_TABLE,
    Student,
    match_backward,
    trajectory_loss,
    unroll,
)
from ddbench.builtins.models.convnet import ConvNetModule
from ddbench.evaluation.augment import DEFAULT_STRATEGY

EXPERTS = ("--set", "mtt.train_epochs=2", "--set", "mtt.max_start_epoch=1", "--set", "mtt.expert_epochs=1")
RUN = ("--methods", "mtt", "--ipc", "1", "--set", "mtt.iterations=3", *EXPERTS, "--set", "eval.epochs=2",
       "--set", "eval.num_eval=1", "--quiet")


def _tiny(dtype=torch.float64):
    torch.manual_seed(0)
    net = ConvNetModule(1, 3, (8, 8), width=4, depth=1, act="relu", norm="instancenorm",
                        pooling="avgpooling").to(dtype)
    student = Student(net)
    start = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    images = torch.randn(6, 1, 8, 8, dtype=dtype, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return student, start, images, labels


def _loss(student, start, images, labels, lr, target, seed=0, steps=3, batch=4):
    gen = torch.Generator().manual_seed(seed)
    theta = unroll(student, start.clone(), images, labels, lr, steps, batch, None, gen)
    return trajectory_loss(theta, start, target)


def test_loss_is_zero_when_the_student_lands_on_the_target():
    student, start, images, labels = _tiny()
    lr = torch.tensor(0.1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    landed = unroll(student, start.clone(), images, labels, lr, 3, 4, None, gen).detach()
    assert _loss(student, start, images, labels, lr, landed).item() == pytest.approx(0, abs=1e-20)
    elsewhere = landed + 0.01 * torch.randn_like(landed)
    assert _loss(student, start, images, labels, lr, elsewhere).item() > 1e-6
    # normalised by the expert's own distance: a student that does not move scores 1
    assert float(trajectory_loss(start, start, landed)) == pytest.approx(1.0)


def test_gradients_match_finite_differences():
    student, start, images, labels = _tiny()
    target = start + 0.05 * torch.randn_like(start)
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    loss = _loss(student, start, images, labels, lr, target)
    g_lr, g_img = torch.autograd.grad(loss, [lr, images])
    h = 1e-6
    up = _loss(student, start, images, labels, torch.tensor(0.2 + h, dtype=torch.float64), target)
    down = _loss(student, start, images, labels, torch.tensor(0.2 - h, dtype=torch.float64), target)
    fd = (up.item() - down.item()) / (2 * h)
    assert float(g_lr) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert abs(fd) > 1e-4  # the check is not vacuous
    direction = torch.randn_like(images)
    lr0 = torch.tensor(0.2, dtype=torch.float64)
    up = _loss(student, start, (images + h * direction).detach(), labels, lr0, target)
    down = _loss(student, start, (images - h * direction).detach(), labels, lr0, target)
    fd_img = (up.item() - down.item()) / (2 * h)
    assert float((g_img * direction).sum()) == pytest.approx(fd_img, rel=1e-5, abs=1e-9)


def _grads(backprop, strategy, steps=5, batch=4, seed=0):
    """Loss and gradients (images, syn_lr) of one matching step by the given backprop."""
    student, start, images, labels = _tiny()
    target = start + 0.05 * torch.randn(start.shape, dtype=start.dtype, generator=torch.Generator().manual_seed(1))
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(seed)
    loss = match_backward(student, start.clone(), images, labels, lr, steps, batch, strategy, gen,
                          lambda theta: trajectory_loss(theta, start, target), backprop)
    return float(loss.detach()), images.grad.clone(), lr.grad.clone(), gen.get_state()


@pytest.mark.parametrize("strategy", [None, DEFAULT_STRATEGY])
def test_recomputed_gradients_equal_full_backpropagation(strategy):
    # 5 steps of 4 images out of 6: several permutations, a short last batch, DSA replayed
    loss_f, img_f, lr_f, state_f = _grads("full", strategy)
    loss_r, img_r, lr_r, state_r = _grads("recompute", strategy)
    assert loss_r == pytest.approx(loss_f, rel=1e-12)
    assert torch.allclose(img_r, img_f, rtol=1e-9, atol=1e-12)
    assert torch.allclose(lr_r, lr_f, rtol=1e-9, atol=1e-12)
    assert img_f.abs().sum() > 0 and lr_f.abs() > 0
    # the run's random stream is the same: the backward replays, it does not draw
    assert torch.equal(state_r, state_f)


def test_tesla_drops_the_cross_step_terms():
    _, img_f, lr_f, _ = _grads("full", None)
    _, img_t, lr_t, _ = _grads("tesla", None)
    assert not torch.allclose(img_t, img_f, rtol=1e-6)  # an approximation, not the gradient
    # with one step there are no cross-step terms: all three agree
    _, img_f1, lr_f1, _ = _grads("full", None, steps=1)
    _, img_t1, lr_t1, _ = _grads("tesla", None, steps=1)
    assert torch.allclose(img_t1, img_f1, rtol=1e-9) and torch.allclose(lr_t1, lr_f1, rtol=1e-9)


class _Saved:
    __slots__ = ("tensor", "__weakref__")


def _peak_saved_bytes(backprop: str, steps: int) -> int:
    """The most bytes the autograd graph holds at once (tensors saved for backward that are
    still referenced) during one matching step."""
    live, peak = [0], [0]

    def release(size):
        live[0] -= size

    def pack(t):
        box = _Saved()
        box.tensor = t
        size = t.numel() * t.element_size()
        live[0] += size
        peak[0] = max(peak[0], live[0])
        weakref.finalize(box, release, size)
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        _grads(backprop, None, steps=steps)
    return peak[0]


def test_recompute_keeps_memory_flat_in_syn_steps():
    full = [_peak_saved_bytes("full", s) for s in (2, 16)]
    rec = [_peak_saved_bytes("recompute", s) for s in (2, 16)]
    assert full[1] > 4 * full[0]  # the reference's graph grows with the steps
    assert rec[1] < 1.2 * rec[0]  # one step's graph at a time
    assert rec[1] < full[1] / 4


def test_student_is_the_network_at_the_flat_parameters():
    student, start, images, _ = _tiny()
    with torch.no_grad():
        assert torch.allclose(student(start, images), student.net(images))
        feats = student.features(start)(images)
        assert torch.allclose(feats[-1], student.net.features(images)[-1])
        assert not torch.allclose(student(start + 1.0, images), student.net(images))


def test_experts_are_built_once_and_shared(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", *RUN, "--seeds", "0", "--store", str(store))
    assert res.code == 0, res.err
    assert "trained 2 expert(s) for mtt on digits" in res.err
    cost = res.out.split("distillation cost")[1].splitlines()
    assert any(line.split()[:4] == ["mtt", "digits", "10", "1"] for line in cost), res.out
    files = sorted((tmp_path / "datasets" / ".ddbench-cache" / "experts").glob("*/expert_*.safetensors"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    # another seed and another distillation parameter: new synthetic sets, the same experts
    res = ddb("run", *RUN, "--seeds", "1", "--set", "mtt.lr_img=50", "--store", str(store))
    assert res.code == 0, res.err
    assert "trained" not in res.err
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert len(rows(store)) == 2 and all(r["status"] == "ok" for r in rows(store))
    # a damaged expert counts as missing and is trained again (only that one)
    files[0].write_bytes(b"garbage")
    dry = ddb("run", *RUN, "--seeds", "2", "--store", str(store), "--dry-run")
    assert dry.code == 0 and "to build (1 of 2)" in dry.out, dry.out
    res = ddb("run", *RUN, "--seeds", "2", "--store", str(store))
    assert "trained 1 expert(s)" in res.err
    assert files[1].stat().st_mtime_ns == stamps[1]
    dry = ddb("run", *RUN, "--seeds", "2", "--store", str(store), "--dry-run")
    assert "present (2)" in dry.out


def test_progress_names_expert_training_only_where_it_happens(ddb, tmp_path):
    # two seeds share one buffer: the first job trains it, the second must not claim to
    loud = tuple(a for a in RUN if a != "--quiet")
    res = ddb("run", *loud, "--seeds", "0,1", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 0, res.err
    assert res.err.count("experts for mtt digits") == 1, res.err
    assert res.err.count("trained 2 expert(s)") == 1


def test_changing_the_expert_recipe_builds_another_buffer(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    assert ddb("run", *RUN, "--seeds", "0", "--store", str(store)).code == 0
    res = ddb("run", *RUN, "--seeds", "0", "--set", "mtt.expert_lr=0.02", "--store", str(store))
    assert res.code == 0 and "trained 2 expert(s)" in res.err
    assert len(list((tmp_path / "datasets" / ".ddbench-cache" / "experts").iterdir())) == 2


def test_the_set_carries_its_learned_lr(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", *RUN, "--seeds", "0", "--set", "mtt.lr_lr=1e-5", "--store", str(store))
    assert res.code == 0, res.err
    from ddbench.storage.artifacts import load_synset

    db = sqlite3.connect(store)
    (artifact,) = db.execute("SELECT artifact FROM synsets WHERE method='mtt'").fetchone()
    synset = load_synset(store.parent / artifact)
    assert synset.lr is not None and synset.lr > 0 and synset.lr != pytest.approx(0.01)


def test_inconsistent_epochs_are_a_clear_error(ddb, tmp_path):
    res = ddb("run", "--methods", "mtt", "--ipc", "1", "--set", "mtt.train_epochs=4",
              "--set", "mtt.max_start_epoch=4", "--set", "mtt.expert_epochs=2",
              "--store", str(tmp_path / "r.sqlite"), "--quiet")
    assert res.code == 2
    assert "max_start_epoch - 1 + expert_epochs <= train_epochs" in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "r.sqlite").exists()


def test_paper_preset_is_the_per_setting_table():
    from ddbench.plan import Resolver
    from ddbench.registry import load_registry

    reg = load_registry()
    resolver = Resolver(reg, "paper", {})
    (c10,) = resolver.variants("distillers", "mtt", "cifar10", 10)
    assert (c10.params.syn_steps, c10.params.expert_epochs, c10.params.max_start_epoch) == (30, 2, 20)
    assert c10.params.lr_teacher == 0.001 and c10.params.expert_lr == 0.01
    (c100,) = resolver.variants("distillers", "mtt", "cifar100", 50)
    assert c100.params.batch_syn == 125 and c100.params.syn_steps == 80
    (other,) = resolver.variants("distillers", "mtt", "mnist", 10)
    assert other.params.syn_steps == MTT.Params().syn_steps  # not in the table: reference defaults
    (overridden,) = Resolver(reg, "paper", {("mtt", "syn_steps"): ["7"]}).variants(
        "distillers", "mtt", "cifar10", 10)
    assert overridden.params.syn_steps == 7
    assert len(PAPER_TABLE) == 6


def test_experts_command_builds_what_run_needs(ddb, tmp_path):
    sets = EXPERTS
    dry = ddb("experts", "--ipc", "1", *sets, "--dry-run")
    assert dry.code == 0 and "to build (2 of 2)" in dry.out, dry.err
    res = ddb("experts", "--ipc", "1", *sets)
    assert res.code == 0 and "trained 2 expert(s)" in res.out, res.err
    res = ddb("experts", "--ipc", "1", *sets, "--set", "mtt.num_experts=3")
    assert "to build (1 of 3)" in res.out and "trained 1 expert(s)" in res.out  # adds, keeps the two
    run = ddb("run", *RUN, "--seeds", "0", "--store", str(tmp_path / "r.sqlite"))
    assert run.code == 0 and "trained" not in run.err, run.err
    listed = ddb("list", "experts")
    assert listed.code == 0 and "digits [clean] convnet: 3 expert(s), 2 epochs, lr 0.01" in listed.out, listed.out
    bad = ddb("experts", "--methods", "dm")
    assert bad.code == 2 and "none of the methods dm uses expert trajectories" in bad.err
