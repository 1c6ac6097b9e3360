"""``ddbench.runtime.compiling``: compiled first-order passes compute what the eager ones do (to float
rounding), the ``auto`` policy, the fallback when compilation fails, and the CLI option."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import TINY, rows

from ddbench.builtins.distillers.dm import matching_loss as dm_loss
from ddbench.builtins.distillers.gradient_matching import class_loss
from ddbench.builtins.models.convnet import ConvNetModule
from ddbench.errors import DDBenchError
from ddbench.evaluation.training import train_epoch
from ddbench.runtime import compiling
from ddbench.runtime.compiling import FirstOrder, enabled, first_order

CPU = torch.device("cpu")


def _net(seed=0):
    torch.manual_seed(seed)
    return ConvNetModule(3, 4, (16, 16), 8, 2, "relu", "instancenorm", "avgpooling")


def test_auto_compiles_on_cpu_for_images_of_28x28_and_up(monkeypatch):
    monkeypatch.setenv(compiling.ENV, "auto")
    monkeypatch.setattr(compiling, "_have_cxx", lambda: True)
    assert enabled(CPU, (32, 32)) and enabled(CPU, (28, 28))
    assert not enabled(CPU, (8, 8)) and not enabled(torch.device("cuda"), (32, 32))
    monkeypatch.setattr(compiling, "_have_cxx", lambda: False)
    assert not enabled(CPU, (32, 32))
    monkeypatch.setenv(compiling.ENV, "on")
    assert enabled(CPU, (8, 8))
    monkeypatch.setenv(compiling.ENV, "off")
    net = _net()
    assert not enabled(CPU, (32, 32)) and first_order(net, CPU, (32, 32)) is net
    monkeypatch.setenv(compiling.ENV, "fast")
    with pytest.raises(DDBenchError, match="'fast' is not a compile mode; valid choices: auto, on, off"):
        enabled(CPU, (32, 32))


def test_compiled_passes_match_eager(monkeypatch):
    """DC's real-side gradient, DM's embeddings and a few training epochs: compiled and eager
    agree to float rounding, and so do the gradients reaching the synthetic images."""
    monkeypatch.setenv(compiling.ENV, "on")
    monkeypatch.setattr(FirstOrder, "_broken", False)
    net = _net()
    fast = first_order(net, CPU, (16, 16))
    assert isinstance(fast, FirstOrder)
    params = list(net.parameters())
    g = torch.Generator().manual_seed(1)
    real = torch.randn(32, 3, 16, 16, generator=g)
    syn0 = torch.randn(4, 3, 16, 16, generator=g)
    syn_y = torch.full((4,), 2)

    def dc(fast_or_none):
        syn = syn0.clone().requires_grad_(True)
        loss = class_loss(net, params, real, syn, 2, syn_y, "ours", fast_or_none)
        return loss, torch.autograd.grad(loss, syn)[0]

    (l_eager, g_eager), (l_fast, g_fast) = dc(None), dc(fast)
    assert l_eager.item() > 0
    torch.testing.assert_close(l_fast, l_eager, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_fast, g_eager, rtol=1e-3, atol=1e-7)

    real_y = torch.arange(4).repeat_interleave(8)
    syn_labels = torch.arange(4)

    def dm(model):
        syn = syn0.clone().requires_grad_(True)
        loss = dm_loss(model, syn, syn_labels, real, real_y, 4)
        return loss, torch.autograd.grad(loss, syn)[0]

    (l_eager, g_eager), (l_fast, g_fast) = dm(net), dm(fast)
    torch.testing.assert_close(l_fast, l_eager, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_fast, g_eager, rtol=1e-3, atol=1e-7)

    a, b = _net(3), _net(3)
    x, y = torch.randn(40, 3, 16, 16, generator=g), torch.randint(0, 4, (40,), generator=g)
    fast_b = first_order(b, CPU, (16, 16))
    for net_, model in ((a, a), (b, fast_b)):
        opt = torch.optim.SGD(net_.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):  # batches of 16, 16, 8: the compiled side sees two shapes
            train_epoch(model, opt, x, y, 16, None, torch.Generator().manual_seed(5))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-3, atol=1e-5)
    assert not torch.equal(a.blocks[0][0].weight, _net(3).blocks[0][0].weight)  # it trained
    assert not FirstOrder._broken  # the compiled code ran, not the eager fallback


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    monkeypatch.setenv(compiling.ENV, "on")
    monkeypatch.setattr(FirstOrder, "_broken", False)

    def broken(fn):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    net = _net()
    fast = first_order(net, CPU, (16, 16))
    x = torch.randn(2, 3, 16, 16)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler\); running eager"):
        out = fast(x)
    torch.testing.assert_close(out, net(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(fast.embed(x), net.embed(x))
    assert FirstOrder._broken


def test_compile_option_reaches_the_workers_and_the_record(ddb, tmp_path, monkeypatch):
    out = tmp_path / "b.json"
    res = ddb("bench", "--settings", "dm", "--data", "digits", "--data-root", str(tmp_path / "d"),
              "--iterations", "2", "--no-flops", "--compile", "on", "--json", str(out))
    assert res.code == 0, res.err
    doc = json.loads(out.read_text())
    assert doc["records"][0]["compile"] == "on" and doc["environment"]["compile"] == "on"
    store = tmp_path / "r.sqlite"  # a run records the mode with its results (not in their key)
    res = ddb("run", "--methods", "dm", "--datasets", "digits", "--ipc", "1", "--seeds", "0", "--compile", "off",
              "--data-root", str(tmp_path / "d"), "--store", str(store), *TINY)
    assert res.code == 0, res.err
    assert [json.loads(r["versions"])["compile"] for r in rows(store)] == ["off"]
    bad = ddb("run", "--compile", "fast")
    assert bad.code == 2 and "'fast' is not one of 'auto', 'on', 'off'" in bad.err
    monkeypatch.setenv(compiling.ENV, "fast")  # a bad environment value: one line, nothing run
    bad = ddb("run", "--datasets", "digits", "--data-root", str(tmp_path / "d"), "--store", str(tmp_path / "s.sqlite"))
    assert bad.code == 2 and "DDBENCH_COMPILE='fast' is not a compile mode" in bad.err
    assert not (tmp_path / "s.sqlite").exists()


def test_mtt_recompute_with_a_compiled_forward_unroll_matches_full_backpropagation(monkeypatch):
    """The forward unroll (differentiated once) compiled, the replayed steps eager: the image and
    lr gradients still equal full back-propagation through the whole unroll, to float32 rounding."""
    from ddbench.builtins.distillers.mtt import Student, match_backward, trajectory_loss

    monkeypatch.setenv(compiling.ENV, "on")
    monkeypatch.setattr(FirstOrder, "_broken", False)

    def grads(backprop, compiled):
        net = _net()
        student = Student(net)
        if compiled:
            student.first_order = first_order(student, CPU, (16, 16))
            assert isinstance(student.first_order, FirstOrder)
        start = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        target = start + 0.05 * torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(2)
        images = torch.randn(8, 3, 16, 16, generator=g).requires_grad_(True)
        labels = torch.arange(4).repeat(2)
        lr = torch.tensor(0.1, requires_grad=True)
        loss = match_backward(student, start.clone(), images, labels, lr, 4, 4, None, g,
                              lambda theta: trajectory_loss(theta, start, target), backprop)
        return loss.detach(), images.grad, lr.grad

    full, compiled = grads("full", False), grads("recompute", True)
    for a, b in zip(compiled, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-7)
    assert full[1].abs().sum() > 0 and not FirstOrder._broken
