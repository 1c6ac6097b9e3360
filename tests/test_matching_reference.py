"""DC/DSA's matching loss against the reference's per-class loop (``main.py`` and
``distance_wb`` of the reference ``utils.py``, written out here as there): the same loss and
the same gradient with respect to the synthetic images, DSA's shared transform included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddbench.builtins.distillers.gradient_matching import DC, DSA
from ddbench.builtins.models.convnet import ConvNet
from ddbench.data.bundle import DataBundle
from ddbench.evaluation.augment import diff_augment

C, SIZE = 3, 8


def tiny_data(per_class: int = 12) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(C * per_class, 3, SIZE, SIZE, generator=g)
    y = torch.arange(C).repeat_interleave(per_class)
    return DataBundle("tiny", x, y, x[:6], y[:6], [str(c) for c in range(C)], (0.0,) * 3, (1.0,) * 3)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ConvNet(ConvNet.Params(width=8)).build(3, C, (SIZE, SIZE))


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
def test_dc_matching_loss_and_image_gradient_equal_the_reference_loop(cls):
    data = tiny_data()
    net = tiny_net()
    images = torch.randn(C * 2, 3, SIZE, SIZE, requires_grad=True)
    labels = torch.arange(C).repeat_interleave(2)
    distiller = cls(cls.Params(batch_real=8))
    strategy = data.dsa_strategy

    ref = reference_matching_loss(net, data, images, labels, 8, distiller.params.dsa,
                                  torch.Generator().manual_seed(3))
    ours = distiller.matching_loss(net, list(net.parameters()), data, images, labels, strategy,
                                   torch.Generator().manual_seed(3))
    (g_ref,) = torch.autograd.grad(ref, images)
    (g_ours,) = torch.autograd.grad(ours, images)
    assert ref.item() > 0.1  # a real mismatch, not a degenerate zero
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)
