"""The fast paths of DC/DSA and DM against straightforward reference computations.

``fast`` only swaps the network's ReLU + 2x2 average pooling for faster layers; the losses and
the gradients with respect to the synthetic images must stay those of the plain network (and
of a per-class loop written here from the reference code) up to float error.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddbench.augment import diff_augment
from ddbench.components import DistillContext
from ddbench.data.bundle import DataBundle
from ddbench.distillers.dm import DM
from ddbench.distillers.dm import matching_loss as dm_loss
from ddbench.distillers.gradient_matching import DC, DSA
from ddbench.models.convnet import ConvNet, FastAvgPool2d, FastReLUAvgPool2d, use_fast_pooling

C, SIZE = 3, 8


def tiny_data(per_class: int = 12) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(C * per_class, 3, SIZE, SIZE, generator=g)
    y = torch.arange(C).repeat_interleave(per_class)
    return DataBundle("tiny", x, y, x[:6], y[:6], [str(c) for c in range(C)], (0.0,) * 3, (1.0,) * 3)


def tiny_net(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return ConvNet(ConvNet.Params(width=8, **kw)).build(3, C, (SIZE, SIZE))


def pooled_nets(seed: int = 0):
    plain = tiny_net(seed)
    return plain, use_fast_pooling(copy.deepcopy(plain))


# --- the layer -------------------------------------------------------------------------------


@pytest.mark.parametrize("fast, ref", [
    (FastAvgPool2d(), nn.AvgPool2d(2, 2)),
    (FastReLUAvgPool2d(), nn.Sequential(nn.ReLU(inplace=True), nn.AvgPool2d(2, 2))),
])
def test_fast_layers_are_the_plain_ones_to_every_order(fast, ref):
    def f(t):  # on a fresh non-leaf, as inside a network (the ReLU is in place)
        return fast(t.clone())

    x = torch.randn(2, 3, 6, 8, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(f(x), ref(x.clone()))
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))  # DC differentiates through a gradient
    # float32: the backward is PyTorch's to the bit (g / 4 copied into each window, masked)
    for size in (8, 2):  # 2: one output pixel, where a reshape would not copy
        x32 = torch.randn(4, 5, size, size, requires_grad=True)
        g = torch.randn(4, 5, size // 2, size // 2)
        (gf,) = torch.autograd.grad(f(x32), x32, g)
        (gr,) = torch.autograd.grad(ref(x32.clone()), x32, g)
        assert torch.equal(gf, gr)


def test_the_fused_layer_is_in_place_like_the_relu_it_replaces():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        FastReLUAvgPool2d()(x)
    FastReLUAvgPool2d()(x * 2 - 1).sum().backward()  # a fresh intermediate: fine
    y = x.sigmoid()  # whose backward needs y: modifying y in place must be caught
    with pytest.raises(RuntimeError, match="inplace"):
        FastReLUAvgPool2d()(y).sum().backward()


@pytest.mark.parametrize("fast, ref", [
    (FastAvgPool2d(), lambda x: F.avg_pool2d(x, 2)),
    (FastReLUAvgPool2d(), lambda x: F.avg_pool2d(F.relu(x), 2)),
])
def test_fast_layers_fall_back_where_their_kernels_do_not_apply(fast, ref):
    odd = torch.randn(2, 3, 7, 5)
    assert torch.equal(fast(odd.clone()), ref(odd))
    strided = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(fast(strided.clone()), ref(strided))


def test_use_fast_pooling_swaps_relu_and_plain_2x2_average_pooling_only():
    net = tiny_net()
    keys = list(net.state_dict())
    use_fast_pooling(net)
    assert [(type(b[2]), type(b[3])) for b in net.blocks] == [(nn.Identity, FastReLUAvgPool2d)] * 3
    assert list(net.state_dict()) == keys
    sig = use_fast_pooling(tiny_net(act="sigmoid"))
    assert [(type(b[2]), type(b[3])) for b in sig.blocks] == [(nn.Sigmoid, FastAvgPool2d)] * 3
    assert not any(isinstance(m, FastAvgPool2d) for m in use_fast_pooling(tiny_net(pooling="maxpooling")).modules())
    other = nn.Sequential(nn.ReLU(), nn.AvgPool2d(3), nn.AvgPool2d(2, 2, padding=1),
                          nn.AvgPool2d(2, 2, ceil_mode=True), nn.ReLU())
    assert [type(m) for m in use_fast_pooling(other)] == [nn.ReLU] + [nn.AvgPool2d] * 3 + [nn.ReLU]
    out_of_place = use_fast_pooling(nn.Sequential(nn.ReLU(), nn.AvgPool2d(2, 2)))
    assert [type(m) for m in out_of_place] == [nn.ReLU, FastAvgPool2d]  # its input stays intact


def saved_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages the autograd graph of one loss keeps."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(net(x), torch.zeros(len(x), dtype=torch.long))
    return sum(storages.values())


def test_the_fused_relu_pooling_keeps_a_smaller_graph():
    plain, fast = pooled_nets()
    x = torch.randn(16, 3, SIZE, SIZE)
    assert saved_bytes(fast, x) < 0.8 * saved_bytes(plain, x)


# --- DC / DSA --------------------------------------------------------------------------------


def reference_distance(gr: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """``distance_wb`` of the reference ``utils.py``, as written there."""
    shape = gr.shape
    if len(shape) == 4:
        gr, gs = gr.reshape(shape[0], -1), gs.reshape(shape[0], -1)
    elif len(shape) == 1:
        return torch.tensor(0.0)
    return torch.sum(1 - torch.sum(gr * gs, dim=-1) / (torch.norm(gr, dim=-1) * torch.norm(gs, dim=-1) + 1e-6))


def reference_matching_loss(net, data, images, labels, batch_real, dsa, gen):
    """The reference's per-class loop (``main.py``), on the network as built."""
    params = list(net.parameters())
    loss = torch.tensor(0.0)
    for c in range(C):
        real = data.sample_class(c, batch_real, gen)
        syn = images[labels == c]
        if dsa:  # one transform, shared: the same generator state for both calls
            state = gen.get_state()
            real = diff_augment(real, data.dsa_strategy, groups=torch.zeros(len(real), dtype=torch.long),
                                generator=gen, num_groups=1)
            gen.set_state(state)
            syn = diff_augment(syn, data.dsa_strategy, groups=torch.zeros(len(syn), dtype=torch.long),
                               generator=gen, num_groups=1)
        g_real = torch.autograd.grad(F.cross_entropy(net(real), torch.full((len(real),), c)), params)
        g_syn = torch.autograd.grad(F.cross_entropy(net(syn), labels[labels == c]), params, create_graph=True)
        loss = loss + sum(reference_distance(r.detach(), s) for r, s in zip(g_real, g_syn, strict=True))
    return loss


@pytest.mark.parametrize("cls", [DC, DSA])
def test_dc_fast_matching_loss_and_image_gradient_equal_the_reference_loop(cls):
    data = tiny_data()
    plain, fast = pooled_nets()
    images = torch.randn(C * 2, 3, SIZE, SIZE, requires_grad=True)
    labels = torch.arange(C).repeat_interleave(2)
    distiller = cls(cls.Params(batch_real=8))
    strategy = data.dsa_strategy

    ref = reference_matching_loss(plain, data, images, labels, 8, distiller.params.dsa,
                                  torch.Generator().manual_seed(3))
    ours = distiller.matching_loss(fast, list(fast.parameters()), data, images, labels, strategy,
                                   torch.Generator().manual_seed(3))
    (g_ref,) = torch.autograd.grad(ref, images)
    (g_ours,) = torch.autograd.grad(ours, images)
    assert ref.item() > 0.1  # a real mismatch, not a degenerate zero
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def distill(cls, fast: bool, nets: list | None = None, **params):
    """Run a distiller on the tiny data; every network it builds comes from the same seeds."""
    torch.manual_seed(0)

    def build(name):
        net = ConvNet(ConvNet.Params(width=8)).build(3, C, (SIZE, SIZE))
        if nets is not None:
            nets.append(net)
        return net

    ctx = DistillContext(data=tiny_data(), ipc=2, seed=0, device=torch.device("cpu"), objectives=[],
                         build_model=build)
    return cls(cls.Params(fast=fast, **params)).distill(ctx).images


@pytest.mark.parametrize("cls", [DC, DSA])
def test_dc_distillation_with_and_without_the_fast_path_agree(cls):
    fast_nets, plain_nets = [], []
    settings = {"iterations": 2, "outer_loop": 2, "inner_loop": 2, "batch_real": 8}
    fast = distill(cls, True, fast_nets, **settings)
    plain = distill(cls, False, plain_nets, **settings)
    assert all(any(isinstance(m, FastAvgPool2d) for m in n.modules()) for n in fast_nets)
    assert not any(isinstance(m, FastAvgPool2d) for n in plain_nets for m in n.modules())
    start = distill(cls, False, iterations=0)
    assert (plain - start).abs().max() > 0.1  # the images moved
    # summation-order differences, amplified by four image steps and the inner training
    torch.testing.assert_close(fast, plain, rtol=0, atol=2e-4)


# --- DM --------------------------------------------------------------------------------------


def test_dm_fast_loss_and_image_gradient_equal_the_plain_network():
    plain, fast = pooled_nets(1)
    for net in (plain, fast):
        net.requires_grad_(False)
    data = tiny_data()
    syn = torch.randn(C * 2, 3, SIZE, SIZE, requires_grad=True)
    syn_y = torch.arange(C).repeat_interleave(2)
    ref = dm_loss(plain, syn, syn_y, data.x_train, data.y_train, C)
    ours = dm_loss(fast, syn, syn_y, data.x_train, data.y_train, C)
    (g_ref,) = torch.autograd.grad(ref, syn)
    (g_ours,) = torch.autograd.grad(ours, syn)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_dm_distillation_with_and_without_the_fast_path_agree():
    fast_nets = []
    fast = distill(DM, True, fast_nets, iterations=3, batch_real=8)
    plain = distill(DM, False, iterations=3, batch_real=8)
    assert all(any(isinstance(m, FastAvgPool2d) for m in n.modules()) for n in fast_nets)
    assert (plain - distill(DM, False, iterations=0)).abs().max() > 1e-3
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
