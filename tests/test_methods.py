"""ConvNet, DM and the evaluation protocol against the reference's definitions."""

from __future__ import annotations

import pytest
import torch

from ddbench.builtins.distillers.dm import class_means, matching_loss
from ddbench.builtins.models.convnet import ConvNet
from ddbench.data.bundle import DataBundle
from ddbench.evaluation.protocol import PRESETS, Protocol, ProtocolParams, evaluate
from ddbench.synthetic import SyntheticSet


def convnet(**kw):
    return ConvNet(ConvNet.Params(**kw))


def test_convnet_matches_the_reference_shapes_and_parameter_count():
    net = convnet().build(3, 10, (32, 32))
    assert sum(p.numel() for p in net.parameters()) == 320_010  # REFERENCE.md 3.1
    assert sum(p.numel() for p in convnet().build(3, 100, (32, 32)).parameters()) == 504_420
    feats = net.features(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 16, 16), (128, 8, 8), (128, 4, 4)]
    assert isinstance(net.blocks[0][1], torch.nn.GroupNorm) and net.blocks[0][1].num_groups == 128
    # one channel: padding 3 in the first conv turns 28x28 into 32x32 maps
    mnist = convnet().build(1, 10, (28, 28))
    assert mnist.blocks[0][0].padding == (3, 3) and mnist.blocks[1][0].padding == (1, 1)
    assert mnist.embed(torch.randn(2, 1, 28, 28)).shape == (2, 2048)
    assert convnet().build(1, 10, (8, 8))(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_convnet_variants():
    net = convnet(width=32, depth=2, norm="batchnorm", pooling="maxpooling", act="sigmoid").build(3, 5, (32, 32))
    assert net.embed(torch.randn(2, 3, 32, 32)).shape == (2, 32 * 8 * 8)
    assert isinstance(net.blocks[0][1], torch.nn.BatchNorm2d)
    assert isinstance(net.blocks[0][3], torch.nn.MaxPool2d)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in convnet(norm="none").build(3, 10, (32, 32)).modules())
    with pytest.raises(ValueError, match="too deep"):
        convnet(depth=5).build(1, 10, (8, 8))


def test_batched_dm_loss_and_gradient_equal_the_reference_class_loop():
    """main_DM.py loops over classes; the batched loss must be the same function."""
    torch.manual_seed(0)
    net = convnet(width=16).build(3, 4, (16, 16))
    for p in net.parameters():
        p.requires_grad_(False)
    C, ipc = 4, 3
    syn = torch.randn(C * ipc, 3, 16, 16, requires_grad=True)
    syn_y = torch.arange(C).repeat_interleave(ipc)
    real_y = torch.tensor([0] * 5 + [1] * 7 + [2] * 4 + [3] * 6)
    real = torch.randn(len(real_y), 3, 16, 16)

    ref = 0.0
    for c in range(C):
        out_real = net.embed(real[real_y == c]).detach()
        out_syn = net.embed(syn[c * ipc : (c + 1) * ipc])
        ref = ref + torch.sum((out_real.mean(0) - out_syn.mean(0)) ** 2)
    (g_ref,) = torch.autograd.grad(ref, syn)

    ours = matching_loss(net, syn, syn_y, real, real_y, C)
    (g_ours,) = torch.autograd.grad(ours, syn)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_class_means_chunking_does_not_change_the_result(monkeypatch):
    import ddbench.builtins.distillers.dm as dm

    torch.manual_seed(1)
    net = convnet(width=8).build(1, 3, (8, 8))
    x, y = torch.randn(50, 1, 8, 8), torch.randint(0, 3, (50,))
    whole = class_means(net, x, y, 3)
    monkeypatch.setattr(dm, "inference_chunk", lambda device: 7)
    torch.testing.assert_close(class_means(net, x, y, 3), whole, rtol=1e-5, atol=1e-6)


def _bundle(n_per_class=6, C=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(C * n_per_class, 1, 8, 8, generator=g)
    y = torch.arange(C).repeat_interleave(n_per_class)
    return DataBundle("toy", x, y, x[:6], y[:6], [str(c) for c in range(C)], (0.0,), (1.0,))


def test_protocol_schedule_and_learned_lr(monkeypatch):
    """lr x0.1 after pass epochs//2+1 with a fresh optimizer; epochs+1 passes; learned lr wins."""
    made = []
    real_sgd = torch.optim.SGD

    def spy(params, lr, momentum, weight_decay):
        made.append((lr, momentum, weight_decay))
        return real_sgd(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    data = _bundle()
    steps = []
    proto = Protocol(ProtocolParams(epochs=6, dsa=False), "paper")
    net = convnet(width=8).build(1, 3, (8, 8))
    evaluate(net, SyntheticSet(data.x_train, data.y_train), data, proto, 0, torch.device("cpu"),
             progress=lambda s, t: steps.append((s, t)))
    assert made == [(0.01, 0.9, 5e-4), (pytest.approx(0.001), 0.9, 5e-4)]
    assert steps[-1] == (7, 7)
    made.clear()
    net = convnet(width=8).build(1, 3, (8, 8))
    evaluate(net, SyntheticSet(data.x_train, data.y_train, lr=0.05), data, proto, 0, torch.device("cpu"))
    assert made[0][0] == 0.05 and made[1][0] == pytest.approx(0.005)


def test_protocol_defaults_are_the_reference_and_hash_tracks_the_recipe():
    p = ProtocolParams()
    assert (p.epochs, p.lr, p.momentum, p.weight_decay, p.batch, p.num_eval, p.dsa) == (
        1000, 0.01, 0.9, 5e-4, 256, 5, True)
    a = Protocol(ProtocolParams(), "paper")
    b = Protocol(ProtocolParams(num_eval=10), "paper")
    c = Protocol(ProtocolParams(**PRESETS["small"]), "small")
    assert a.hash == b.hash != c.hash


def test_evaluation_learns_something_on_digits():
    from pathlib import Path

    from ddbench.builtins.datasets.digits import Digits

    data = Digits(None).load(None, Path("."), False)
    torch.manual_seed(0)
    net = convnet().build(1, 10, (8, 8))
    acc = evaluate(net, SyntheticSet(data.x_train[:200], data.y_train[:200]), data,
                   Protocol(ProtocolParams(epochs=30), "small"), 0, torch.device("cpu"))
    assert acc > 0.7


def test_allocator_tuning_applies_once_and_can_be_turned_off(monkeypatch):
    import sys

    import ddbench.runtime.allocator as alloc

    monkeypatch.setattr(alloc, "_done", False)
    monkeypatch.setenv("DDBENCH_MALLOC_TUNING", "0")
    assert alloc.tune_allocator() is False
    monkeypatch.delenv("DDBENCH_MALLOC_TUNING")
    expected = sys.platform.startswith("linux")
    assert alloc.tune_allocator() is expected
    assert alloc.inference_chunk(torch.device("cpu")) == alloc.CPU_CHUNK


def test_glibc_defaults_gives_large_blocks_back():
    """Inside ``glibc_defaults`` a freed 400 MB block leaves the process; on the tuned heap it
    stays. In a fresh process: a heap that already holds free memory would serve the block."""
    import subprocess
    import sys

    import ddbench.runtime.allocator as alloc

    if not alloc.tune_allocator():
        pytest.skip("glibc malloc tuning is not available on this platform")
    script = """
import torch
import ddbench.runtime.allocator as alloc
from ddbench.runtime.cost import _rss_bytes

def returned_on_free():
    x = torch.ones(100_000_000)  # 400 MB, touched
    during = _rss_bytes()
    del x
    return during - _rss_bytes()

assert alloc.tune_allocator()
with alloc.glibc_defaults():
    inside = returned_on_free()
print(inside, returned_on_free())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    inside, tuned = map(int, out.stdout.split())
    assert inside > 300 * 2**20, out.stdout  # mmap'd: unmapped on free
    assert tuned < 100 * 2**20, out.stdout  # tuned heap: kept for reuse


def test_glibc_defaults_keeps_mid_size_blocks_in_the_heap():
    """Any mallopt switches glibc's dynamic mmap threshold off, leaving it at 128 KiB, so inside
    ``glibc_defaults`` every activation-sized block was mmapped and faulted in afresh (MTT
    ~25% slower). The settled dynamic values (mmap above 32 MiB) keep an 8 MB block in the heap."""
    import subprocess
    import sys

    import ddbench.runtime.allocator as alloc

    if not alloc.tune_allocator():
        pytest.skip("glibc malloc tuning is not available on this platform")
    script = """
import torch
import ddbench.runtime.allocator as alloc
from ddbench.runtime.cost import _rss_bytes

assert alloc.tune_allocator()
with alloc.glibc_defaults():
    x = torch.ones(2_000_000)  # 8 MB, touched
    during = _rss_bytes()
    del x
    print(during - _rss_bytes())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) < 4 * 2**20, out.stdout  # kept in the heap, not unmapped
