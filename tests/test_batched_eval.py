"""Batched evaluation (``evaluate_many``): the networks of a cell group trained together give
what each would give alone, BatchNorm networks fall back to one by one, and ``ddbench run``
stores the same accuracies with ``eval.batched`` on and off."""

from __future__ import annotations

import pytest
import torch
from conftest import rows
from torch import nn

from ddbench.builtins.models.convnet import ConvNetModule
from ddbench.data.bundle import DataBundle
from ddbench.evaluation import batched as batched_eval
from ddbench.evaluation import protocol as proto
from ddbench.evaluation.batched import batchable, evaluate_many
from ddbench.evaluation.protocol import Protocol, ProtocolParams, evaluate
from ddbench.synthetic import SyntheticSet

CPU = torch.device("cpu")
SEEDS = [3, 7, 11]
#: 20 images in batches of 8 (the last one short); lr x0.1 and fresh momentum after pass 3 of 5
SMALL = {"epochs": 4, "batch": 8}


def tiny_data() -> tuple[DataBundle, SyntheticSet]:
    """A digits-like problem: 1x8x8 images, 10 classes, a 2-per-class synthetic set."""
    g = torch.Generator().manual_seed(0)
    data = DataBundle("tiny", torch.randn(50, 1, 8, 8, generator=g), torch.arange(50) % 10,
                      torch.randn(60, 1, 8, 8, generator=g), torch.arange(60) % 10,
                      [str(c) for c in range(10)], (0.0,), (1.0,),
                      dsa_strategy="color_crop_cutout_scale_rotate")
    return data, SyntheticSet(torch.randn(20, 1, 8, 8, generator=g), torch.arange(20) % 10)


def convnets(norm: str = "instancenorm", seeds=SEEDS) -> list[nn.Module]:
    nets = []
    for seed in seeds:  # as the runner does: the global seed, then the build
        torch.manual_seed(seed)
        nets.append(ConvNetModule(1, 10, (8, 8), 16, 3, "relu", norm, "avgpooling"))
    return nets


def one_by_one(nets, data, synset, protocol, seeds=SEEDS) -> list[float]:
    return [evaluate(net, synset, data, protocol, s, CPU) for net, s in zip(nets, seeds, strict=True)]


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("dsa", [True, False])
def test_batched_convnet_equals_one_by_one_across_the_lr_decay(dsa):
    data, synset = tiny_data()
    protocol = Protocol(ProtocolParams(**SMALL, dsa=dsa), "paper")
    alone, together = convnets(), convnets()
    expected = one_by_one(alone, data, synset, protocol)
    got = evaluate_many(together, synset, data, protocol, SEEDS, CPU)
    assert got == expected
    for a, b in zip(alone, together, strict=True):
        # float rounding of a grouped conv, amplified by training: ~1e-7 on most CPUs, 1.3e-3 on
        # one net on an AMD EPYC (one early rounding flip); nets of other seeds differ by ~0.65
        assert max_param_diff(a, b) < 5e-3
    assert max_param_diff(alone[0], convnets()[0]) > 1e-2  # and training did move them


@pytest.mark.parametrize("mode,loss", [("soft", "kl"), ("soft", "sce"), ("teacher", "kl")])
def test_soft_and_teacher_labels_batched_equal_one_by_one(mode, loss):
    """Soft labels (probabilities with a zero: a -inf logit) gathered per net, and a teacher
    relabelling every net's augmented batch in one forward, train as each net would alone."""
    data, synset = tiny_data()
    probs = torch.softmax(torch.randn(20, 10, generator=torch.Generator().manual_seed(1)), 1)
    probs[0, 3] = 0
    synset.soft_labels, synset.soft_kind = probs / probs.sum(1, keepdim=True), "probabilities"
    teacher = convnets(seeds=[99])[0] if mode == "teacher" else None
    protocol = Protocol(ProtocolParams(**SMALL, labels=mode, soft_loss=loss, temperature=2.0), "paper")
    alone, together = convnets(), convnets()
    expected = [evaluate(net, synset, data, protocol, s, CPU, teacher=teacher)
                for net, s in zip(alone, SEEDS, strict=True)]
    got = evaluate_many(together, synset, data, protocol, SEEDS, CPU, teacher=teacher)
    assert got == expected
    assert all(max_param_diff(a, b) < 5e-3 for a, b in zip(alone, together, strict=True))
    hard = convnets()
    evaluate_many(hard, synset, data, Protocol(ProtocolParams(**SMALL), "paper"), SEEDS, CPU)
    assert max_param_diff(hard[0], together[0]) > 1e-2  # the labels did change the training


def test_each_network_keeps_its_own_seed():
    """Reversing the group reverses the results: net i follows seeds[i], not its position."""
    data, synset = tiny_data()
    protocol = Protocol(ProtocolParams(**SMALL), "paper")
    forward = convnets()
    backward = convnets()[::-1]
    evaluate_many(forward, synset, data, protocol, SEEDS, CPU)
    evaluate_many(backward, synset, data, protocol, SEEDS[::-1], CPU)
    for a, b in zip(forward, backward[::-1], strict=True):
        assert max_param_diff(a, b) < 1e-5
    assert max_param_diff(forward[0], forward[1]) > 1e-2


def test_learned_lr_and_a_single_pass_follow_the_synthetic_set():
    data, synset = tiny_data()
    synset.lr, synset.epochs = 0.05, 1  # decay after the last pass: no effect on training
    protocol = Protocol(ProtocolParams(batch=8), "paper")
    alone, together = convnets(), convnets()
    assert evaluate_many(together, synset, data, protocol, SEEDS, CPU) == one_by_one(alone, data, synset, protocol)
    assert all(max_param_diff(a, b) < 1e-5 for a, b in zip(alone, together, strict=True))


def test_only_pure_networks_are_batchable():
    assert batchable(convnets(seeds=[0])[0])
    assert not batchable(convnets("batchnorm", seeds=[0])[0])  # running statistics
    assert not batchable(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)))


def test_batchnorm_networks_fall_back_to_one_by_one(monkeypatch):
    def no_stack(nets):
        raise AssertionError("a BatchNorm network must not be stacked")

    monkeypatch.setattr(batched_eval, "_Stack", no_stack)
    data, synset = tiny_data()
    protocol = Protocol(ProtocolParams(**SMALL), "paper")
    alone, together = convnets("batchnorm"), convnets("batchnorm")
    steps = []
    got = evaluate_many(together, synset, data, protocol, SEEDS, CPU, progress=lambda s, t: steps.append((s, t)))
    assert got == one_by_one(alone, data, synset, protocol)
    assert all(max_param_diff(a, b) == 0 for a, b in zip(alone, together, strict=True))
    assert steps[-1] == (15, 15) and len(steps) == 15  # one count over the 3 x 5 passes


def test_diverged_network_fails_the_group():
    data, synset = tiny_data()
    synset.lr = 1e12
    protocol = Protocol(ProtocolParams(**SMALL), "paper")
    with pytest.raises(FloatingPointError, match=r"evaluation training loss is nan \(network 1 of 3"):
        evaluate_many(convnets(), synset, data, protocol, SEEDS, CPU)


def test_batched_is_not_part_of_the_protocol_hash():
    small = {**proto.PRESETS["small"]}
    hashes = {Protocol(ProtocolParams(**small, batched=b), "small").hash for b in ("auto", "on", "off")}
    assert hashes == {"0f87d5dae11dac3d"}  # the stored baselines' protocol: still comparable


def _run(ddb, store, batched: str):
    args = ["run", "--methods", "random", "--ipc", "2", "--seeds", "0", "--store", str(store), "--quiet",
            "--set", "eval.epochs=4", "--set", "eval.num_eval=3", "--set", f"eval.batched={batched}"]
    res = ddb(*args)
    assert res.code == 0, res.err
    got = sorted(rows(store), key=lambda r: r["eval_index"])
    assert len(got) == 3 and all(r["status"] == "ok" for r in got), [r["error"] for r in got]
    return got


def test_run_stores_the_same_accuracies_batched_or_not(ddb, tmp_path):
    together = _run(ddb, tmp_path / "batched.sqlite", "on")
    alone = _run(ddb, tmp_path / "alone.sqlite", "off")
    assert [r["accuracy"] for r in together] == [r["accuracy"] for r in alone]
    assert [r["cell_key"] for r in together] == [r["cell_key"] for r in alone]
    assert {r["protocol_hash"] for r in together + alone} == {alone[0]["protocol_hash"]}
    assert '"batched": "on"' in together[0]["protocol_params"]
    assert len({r["seconds"] for r in together}) == 1  # the group's time, split evenly
    assert len({r["seconds"] for r in alone}) == 3


def test_auto_batches_on_cuda_only():
    p = ProtocolParams()
    assert p.batched == "auto" and not p.batches_on(torch.device("cpu")) and p.batches_on(torch.device("cuda"))
    assert ProtocolParams(batched="on").batches_on(torch.device("cpu"))
    assert not ProtocolParams(batched="off").batches_on(torch.device("cuda"))
