"""Evaluation architectures: the timm ResNet-18/VGG-11 with the small-image adapter, the
reference AlexNet/LeNet/MLP, generic ``timm:NAME`` models, and their use in runs."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, rows

from ddbench.builtins.datasets.digits import Digits
from ddbench.builtins.models.classic import MLP, AlexNet, LeNet
from ddbench.builtins.models.timm_models import VGG11, ResNet18, Timm
from ddbench.errors import DDBenchError
from ddbench.evaluation.protocol import Protocol, ProtocolParams, evaluate
from ddbench.synthetic import SyntheticSet

MODELS = {"resnet18": ResNet18, "vgg11": VGG11, "alexnet": AlexNet, "lenet": LeNet, "mlp": MLP}


def build(name: str, channels: int, size: int, classes: int = 10, **params):
    cls = MODELS[name]
    return cls(cls.Params(**params) if cls.Params else None).build(channels, classes, (size, size))


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("name", "params", "shape", "expected"), [
    # kuangliu/DC ResNet18 on CIFAR-10 (BasicBlock [2,2,2,2], 3x3 stem): 11,173,962
    ("resnet18", {}, (3, 32), 11_173_962),
    ("resnet18", {"norm": "batchnorm"}, (3, 32), 11_173_962),
    # DC VGG11: convs 9,220,480 + 8 norms 5,504 + Linear(512, 10) 5,130
    ("vgg11", {}, (3, 32), 9_231_114),
    ("vgg11", {"norm": "none"}, (3, 32), 9_220_480 + 5_130),
    # DC AlexNet: convs 9,728 + 614,592 + 442,624 + 442,560 + 331,968, fc 3,072 x 10 + 10
    ("alexnet", {}, (3, 32), 1_872_202),
    # DC LeNet on MNIST: 156 + 2,416 + 48,120 + 10,164 + 850
    ("lenet", {}, (1, 28), 61_706),
    # DC MLP on MNIST: 784 x 128 + 128, 128 x 128 + 128, 128 x 10 + 10
    ("mlp", {}, (1, 28), 118_282),
])
def test_parameter_counts_match_the_reference_networks(name, params, shape, expected):
    assert n_params(build(name, shape[0], shape[1], **params)) == expected


# spatial size of each feature map (shallow to deep) for (channels, input size)
RESNET_MAPS = {(3, 32): [32, 32, 16, 8, 4], (1, 28): [28, 28, 14, 7, 4], (1, 8): [8, 8, 4, 2, 2]}
VGG_MAPS = {(3, 32): [32, 16, 8, 4, 2, 1], (1, 28): [32, 16, 8, 4, 2, 1], (3, 8): [8, 4, 2, 2, 2, 1]}


@pytest.mark.parametrize(("name", "maps"), [("resnet18", RESNET_MAPS), ("vgg11", VGG_MAPS)])
def test_adapter_keeps_the_reference_map_sizes_and_never_collapses(name, maps):
    """Stride-1 3x3 stem, no stem max-pool (ResNet: 32 -> 4x4 as the reference), the 28 -> 32
    trick for one-channel VGG, and no convolution on maps under 2x2 at 8 px."""
    for (c, s), expected in maps.items():
        feats = build(name, c, s).features(torch.randn(2, c, s, s))
        assert [f.shape[-1] for f in feats] == expected, (c, s)
    resnet = build("resnet18", 3, 32).net
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("name", [*MODELS, "timm:resnet50", "timm:mobilenetv3_small_100"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_every_model_runs_at_8_28_and_32_px(name, channels, size):
    if name.startswith("timm:"):
        net = Timm(Timm.Params(arch=name[5:])).build(channels, 7, (size, size))
    else:
        net = build(name, channels, size, classes=7)
    x = torch.randn(3, channels, size, size)
    assert net(x).shape == (3, 7)
    emb = net.embed(x)
    assert emb.dim() == 2 and emb.shape[0] == 3
    feats = net.features(x)
    assert feats and all(f.shape[0] == 3 for f in feats)
    assert all(min(f.shape[-2:]) >= 1 for f in feats if f.dim() == 4)


def _digits(tmp_path):
    return Digits().load(None, tmp_path, False)


def _train(net, data, epochs: int, lr: float, batch: int = 64) -> float:
    protocol = Protocol(ProtocolParams(epochs=epochs, lr=lr, batch=batch, dsa=False), "small")
    return evaluate(net, SyntheticSet(data.x_train, data.y_train), data, protocol, 0, torch.device("cpu"))


@pytest.mark.parametrize(("name", "params", "epochs", "lr"), [
    ("resnet18", {}, 2, 0.01),
    ("vgg11", {"norm": "batchnorm"}, 2, 0.01),
    ("alexnet", {}, 3, 0.05),
    ("lenet", {}, 30, 0.01),
    ("mlp", {}, 10, 0.01),
])
def test_each_model_trains_well_above_chance_on_digits(tmp_path, name, params, epochs, lr):
    torch.manual_seed(0)
    data = _digits(tmp_path)
    acc = _train(build(name, data.channels, data.image_size[0], **params), data, epochs, lr)
    assert acc > 0.5, f"{name}: {acc:.3f} (chance 0.1)"


@pytest.mark.slow
def test_instance_norm_vgg11_trains_on_digits(tmp_path):
    """The reference 'VGG11' (instance norm) starts slowly on 8x8 digits: its last stage
    normalises 2x2 maps; a few more epochs than the others."""
    torch.manual_seed(0)
    data = _digits(tmp_path)
    assert _train(build("vgg11", 1, 8), data, 6, 0.01) > 0.5


def test_unknown_timm_architecture_is_one_line_with_close_matches():
    with pytest.raises(DDBenchError, match=r"unknown timm architecture 'resnet19'; close matches: .*resnet18"):
        Timm(Timm.Params(arch="resnet19")).build(3, 10, (32, 32))


def test_timm_models_are_named_with_an_argument_and_keep_other_keys(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    base = ["run", "--methods", "random", "--ipc", "1", "--seeds", "0", "--store", str(store), *TINY]
    assert ddb(*base, "--models", "convnet").code == 0
    res = ddb(*base, "--models", "convnet,timm:resnet10t")
    assert res.code == 0, res.err
    assert "1 evaluation(s) run, 1 already stored" in res.out  # convnet's key is unchanged
    got = {r["model"]: r for r in rows(store)}
    assert set(got) == {"convnet", "timm:resnet10t"}
    assert '"arch": "resnet10t"' in got["timm:resnet10t"]["model_params"]


@pytest.mark.parametrize(("models", "message"), [
    ("timm", "model 'timm' needs an argument: timm:ARCH (e.g. timm:resnet50)"),
    ("convnet:3", "model 'convnet' takes no argument; got 'convnet:3'"),
    ("timm:resnet19", "model 'timm:resnet19' cannot be built for digits (1x8x8): unknown timm architecture"),
])
def test_bad_model_specs_are_one_line_errors(ddb, tmp_path, models, message):
    res = ddb("run", "--models", models, "--store", str(tmp_path / "r.sqlite"), "--quiet")
    assert res.code == 2 and res.err.count("\n") == 1
    assert message in res.err
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize("model", ["resnet18", "vgg11", "alexnet", "lenet", "mlp"])
def test_every_model_can_be_the_distillation_model(ddb, tmp_path, model):
    """DM embeds with it, +mim reads its per-layer features (vectors for the MLP)."""
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "dm,dm+mim", "--ipc", "1", "--seeds", "0", "--models", "mlp",
              "--set", f"dm.model={model}", "--set", "dm.batch_real=8", "--set", "mim.pool=2",
              "--store", str(store), *TINY)
    assert res.code == 0, res.err
    got = rows(store)
    assert len(got) == 2 and all(r["status"] == "ok" for r in got), [r["error"] for r in got]
    assert all(f'"model": "{model}"' in r["params"] for r in got)


def test_list_shows_parameter_counts_for_given_inputs(ddb):
    res = ddb("list", "models")
    assert res.code == 0
    assert "size: 1x28x28: 11,172,810 | 3x32x32: 11,173,962 parameters (10 classes" in res.out
    assert "size: 1x28x28: 317,706 | 3x32x32: 320,010 parameters" in res.out  # convnet
    assert "size: depends on the architecture (timm:NAME)" in res.out
    res = ddb("list", "models", "--input", "3x32x32", "--classes", "100")
    assert "size: 3x32x32: 504,420 parameters (100 classes" in res.out  # ConvNet on CIFAR-100
    bad = ddb("list", "models", "--input", "3x32")
    assert bad.code == 2 and "invalid --input '3x32'" in bad.err
