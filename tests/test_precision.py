"""bf16 autocast as a keyed option: close to float32, not equal to it, never the default, and
adding the option left the keys of stored float32 results unchanged."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, rows
from test_matching_reference import SIZE, C, tiny_data, tiny_net

from ddbench.builtins.distillers.dm import matching_loss as dm_loss
from ddbench.builtins.distillers.gradient_matching import DC
from ddbench.builtins.models.convnet import ConvNet
from ddbench.runtime.precision import autocast

CPU = torch.device("cpu")


def loss_and_grad(fn, amp: str, images):
    with autocast(CPU, amp):
        loss = fn(images)
    (g,) = torch.autograd.grad(loss, images)
    return loss.detach(), g


def assert_close_not_equal(fp32, bf16, loss_rtol: float, min_cos: float):
    (l32, g32), (l16, g16) = fp32, bf16
    assert l16.dtype == torch.float32 and g16.dtype == torch.float32
    assert not torch.equal(g16, g32)  # bf16 really ran
    assert abs(l16 - l32) <= loss_rtol * abs(l32)
    assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > min_cos


def test_dm_under_bf16_is_close_to_float32():
    torch.manual_seed(0)  # the net's initialisation, independent of the tests run before
    net = ConvNet(ConvNet.Params(width=32)).build(3, C, (16, 16)).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    real, real_y = torch.randn(60, 3, 16, 16, generator=g), torch.arange(C).repeat_interleave(20)
    syn = torch.randn(6, 3, 16, 16, generator=g, requires_grad=True)
    syn_y = torch.arange(C).repeat_interleave(2)

    def fn(x):
        return dm_loss(net, x, syn_y, real, real_y, C)

    assert_close_not_equal(loss_and_grad(fn, "off", syn), loss_and_grad(fn, "bf16", syn), 0.05, 0.99)


def test_dc_under_bf16_is_close_to_float32():
    data, net = tiny_data(), tiny_net()
    images = torch.randn(C * 2, 3, SIZE, SIZE, requires_grad=True)
    labels = torch.arange(C).repeat_interleave(2)
    dc = DC(DC.Params(batch_real=8))

    def fn(x):
        return dc.matching_loss(net, list(net.parameters()), data, x, labels, data.dsa_strategy,
                                torch.Generator().manual_seed(3))

    assert_close_not_equal(loss_and_grad(fn, "off", images), loss_and_grad(fn, "bf16", images), 0.1, 0.95)


def test_unknown_amp_is_refused():
    with pytest.raises(ValueError, match="unknown amp 'fp8'; choose from off, bf16"):
        autocast(CPU, "fp8")


def test_amp_is_a_keyed_option_and_off_keeps_the_old_keys(ddb, tmp_path, monkeypatch):
    store = tmp_path / "r.sqlite"
    base = ["run", "--methods", "dm", "--ipc", "1", "--seeds", "0", "--store", str(store), *TINY]
    dry = [*base, "--dry-run"]
    assert ddb(*base).code == 0
    (row,) = rows(store)
    assert '"amp"' not in row["params"]  # off, the neutral value: not part of key or record
    assert "1 already stored" in ddb(*dry).out
    from ddbench.builtins.distillers.dm import DM

    monkeypatch.setattr(DM, "late_params", {})  # as if amp had always been a parameter
    assert "0 already stored" in ddb(*dry).out
    monkeypatch.undo()
    res = ddb(*base, "--set", "dm.amp=bf16")
    assert res.code == 0, res.err
    bf16 = [r for r in rows(store) if '"amp": "bf16"' in r["params"]]
    assert len(bf16) == 1 and bf16[0]["distill_key"] != row["distill_key"]
    report = ddb("report", "--store", str(store)).out
    assert "dm [dm.amp=off]" in report and "dm [dm.amp=bf16]" in report  # not "amp=None"
    bad = ddb(*base, "--set", "dm.amp=fp16")
    assert bad.code == 2 and "fp16" in bad.err and "bf16" in bad.err
