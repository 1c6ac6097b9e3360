"""Data conditions: ZCA whitening (MTT's), label noise and class imbalance; in keys, rows,
tables and expert buffers; the IPC rule under imbalance."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, rows

from ddbench.data import conditions
from ddbench.data.conditions import ZCA, ZCA_EPS


def _correlated(n=4000, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.linspace(0.05, 1.0, d)
    return (torch.randn(n, d, generator=g) @ mix + 0.3).view(n, 3, 2, 2)


def test_zca_matches_the_reference_formula():
    x = _correlated()
    zca = ZCA.fit(x)
    flat = x.reshape(len(x), -1).double()
    centred = flat - flat.mean(0)
    cov = centred.T @ centred / (len(flat) - 1)
    u, s, _ = torch.linalg.svd(cov)  # kornia: svd of the unbiased covariance
    expected = u @ torch.diag((s + ZCA_EPS).rsqrt()) @ u.T
    assert torch.allclose(zca.transform.double(), expected, atol=1e-5)
    out = zca(x).reshape(len(x), -1).double()
    assert torch.allclose(out.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-5)
    # whitened covariance has eigenvalues s / (s + eps): 1 for strong directions, damped for weak
    got = torch.linalg.eigvalsh(out.T @ out / (len(out) - 1))
    assert torch.allclose(got.sort().values, (s / (s + ZCA_EPS)).sort().values, atol=1e-4)
    assert float(got.min()) < 0.5  # eps = 0.1 is a strong regulariser here, not a no-op
    assert torch.allclose(zca.inverse(zca(x)), x, atol=1e-4)


def test_zca_bundle_fits_on_train_applies_to_test_and_is_cached(tmp_path, monkeypatch):
    from ddbench.builtins.datasets.digits import Digits

    data = Digits().load(None, tmp_path, False)
    white = conditions.apply(data, "zca", tmp_path)
    assert data.zca is None and white.zca is not None  # the original bundle is untouched
    assert torch.allclose(white.x_train.mean(0), torch.zeros_like(white.x_train[0]), atol=1e-4)
    assert float(white.x_test.mean(0).abs().max()) > 1e-3  # test centred with the train mean only
    manual = white.zca(data.x_test * data.std[0] + data.mean[0])
    assert torch.allclose(white.x_test, manual, atol=1e-5)
    # pictures: the inverse gives back the pixels
    assert torch.allclose(white.denormalize(white.x_train[:5]), data.denormalize(data.x_train[:5]), atol=1e-4)
    assert list((tmp_path / ".ddbench-cache").glob("zca-*.safetensors"))

    def no_fit(*a, **k):
        raise AssertionError("fitted again instead of reading the cache")

    monkeypatch.setattr(ZCA, "fit", classmethod(no_fit))
    again = conditions.apply(data, "zca", tmp_path)
    assert torch.equal(again.x_train, white.x_train)
    assert conditions.apply(data, "clean", tmp_path) is data


def test_conditions_are_an_axis_of_the_run(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "random,mtt", "--ipc", "1", "--seeds", "0", "--conditions", "clean,zca",
              "--set", "mtt.iterations=2", "--set", "mtt.train_epochs=2", "--set", "mtt.max_start_epoch=1",
              "--set", "mtt.expert_epochs=1", "--set", "eval.epochs=2", "--set", "eval.num_eval=1",
              # a fixed lr: two iterations on one-epoch experts drive the learned lr negative on
              # clean digits (the set is then rejected), which exit 0 used to hide
              "--set", "mtt.lr_lr=0", "--store", str(store), "--quiet")
    assert res.code == 0, res.err
    got = rows(store)
    assert sorted((r["method"], r["conditions"]) for r in got) == [
        ("mtt", "clean"), ("mtt", "zca"), ("random", "clean"), ("random", "zca")]
    assert len({r["distill_key"] for r in got}) == 4
    assert "digits [zca]" in res.out
    # ZCA and plain experts are not interchangeable: two buffers
    assert res.err.count("trained 2 expert(s)") == 2
    assert len(list((tmp_path / "datasets" / ".ddbench-cache" / "experts").iterdir())) == 2


def test_unknown_condition_is_a_clear_error(ddb, tmp_path):
    res = ddb("run", "--conditions", "clean,blur", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 2
    assert res.err.strip() == ("ddbench: error: unknown condition 'blur'; " + conditions.VALID)
    assert conditions.VALID.startswith("valid choices: clean, zca, noise:RATE")
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize("condition", ["clean", "zca"])
def test_condition_changes_the_key_only_when_not_clean(ddb, tmp_path, condition):
    res = ddb("run", "--methods", "random", "--ipc", "1", "--seeds", "0", "--conditions", condition,
              "--dry-run")
    assert res.code == 0
    assert ("digits [zca]" in res.out) == (condition == "zca")


# --------------------------------------------------------------------- label noise, imbalance


def _digits(root):
    from ddbench.builtins.datasets.digits import Digits

    return Digits().load(None, root, False)


def _labels_only(n: int, num_classes: int, seed: int = 0):
    """A bundle of ``n`` balanced labels (1-pixel images): enough for the noise statistics."""
    from ddbench.data.bundle import DataBundle

    y = torch.arange(n) % num_classes
    return DataBundle("toy", torch.zeros(n, 1, 1, 1), y, torch.zeros(5, 1, 1, 1), torch.arange(5) % num_classes,
                      [str(c) for c in range(num_classes)], (0.0,), (1.0,))


def _within_4_sigma(realised: float, rate: float, n: int) -> bool:
    return abs(realised - rate) <= 4 * (rate * (1 - rate) / n) ** 0.5


@pytest.mark.parametrize("rate", [0.2, 0.45])
def test_symmetric_noise_rate_is_the_requested_one_and_seeded(tmp_path, rate):
    data = _labels_only(20_000, 10)
    noisy = conditions.apply(data, f"noise:{rate}", tmp_path, seed=3)
    changed = noisy.y_train != data.y_train
    assert _within_4_sigma(float(changed.float().mean()), rate, len(changed))
    # the new label is uniform over the other classes: shift (new - old) mod C in 1..C-1
    shifts = torch.bincount((noisy.y_train - data.y_train)[changed] % 10, minlength=10)
    assert shifts[0] == 0
    n_flipped = int(changed.sum())
    for k in range(1, 10):
        assert _within_4_sigma(int(shifts[k]) / n_flipped, 1 / 9, n_flipped)
    again = conditions.apply(data, f"noise:{rate}", tmp_path, seed=3)
    other = conditions.apply(data, f"noise:{rate}", tmp_path, seed=4)
    assert torch.equal(again.y_train, noisy.y_train)
    assert not torch.equal(other.y_train, noisy.y_train)


def test_noise_on_digits_matches_the_rate_and_leaves_images_and_test_split(tmp_path):
    data = _digits(tmp_path)
    before = (data.x_train.clone(), data.y_train.clone(), data.x_test.clone(), data.y_test.clone())
    noisy = conditions.apply(data, "noise:0.2", tmp_path, seed=0)
    n = len(data.y_train)
    assert _within_4_sigma(float((noisy.y_train != data.y_train).float().mean()), 0.2, n)
    assert noisy.x_train is data.x_train  # images are shared, only labels change
    assert torch.equal(data.y_train, before[1])  # the clean bundle is not modified
    assert noisy.class_counts() != data.class_counts()  # per-class indices are recomputed


def test_asymmetric_noise_flips_c_to_c_plus_1_only(tmp_path):
    data = _labels_only(20_000, 10)
    noisy = conditions.apply(data, "noise-asym:0.3", tmp_path, seed=1)
    changed = noisy.y_train != data.y_train
    assert torch.equal(noisy.y_train[changed], (data.y_train[changed] + 1) % 10)
    assert _within_4_sigma(float(changed.float().mean()), 0.3, len(changed))
    assert torch.equal(conditions.apply(data, "noise-asym:0.3", tmp_path, seed=1).y_train, noisy.y_train)


@pytest.mark.parametrize("ratio", [1, 10, 50])
def test_imbalance_follows_the_exponential_profile(tmp_path, ratio):
    data = _digits(tmp_path)
    n_max = min(data.class_counts())
    long_tail = conditions.apply(data, f"imbalance:{ratio}", tmp_path, seed=0)
    counts = long_tail.class_counts()
    assert counts == [round(n_max * ratio ** (-c / 9)) for c in range(10)]
    assert counts == sorted(counts, reverse=True) and counts[0] == n_max
    assert abs(counts[0] / ratio - counts[-1]) <= 0.5  # max/min is the ratio up to rounding
    # the kept images are real training images of their class, a seeded random subset
    flat = data.x_train.flatten(1)
    for x, y in zip(long_tail.x_train[:40].flatten(1), long_tail.y_train[:40], strict=True):
        match = (flat == x).all(1).nonzero().flatten()
        assert len(match) and bool((data.y_train[match] == y).any())
    same = conditions.apply(data, f"imbalance:{ratio}", tmp_path, seed=0)
    other = conditions.apply(data, f"imbalance:{ratio}", tmp_path, seed=1)
    assert torch.equal(same.x_train, long_tail.x_train)
    assert not torch.equal(other.x_train, long_tail.x_train)


@pytest.mark.parametrize("condition", ["clean", "noise:0.3", "noise-asym:0.3", "imbalance:10"])
def test_conditions_never_touch_the_test_split(tmp_path, condition):
    data = _digits(tmp_path)
    x_test, y_test = data.x_test.clone(), data.y_test.clone()
    out = conditions.apply(data, condition, tmp_path, seed=2)
    assert out.x_test is data.x_test and out.y_test is data.y_test
    assert torch.equal(out.x_test, x_test) and torch.equal(out.y_test, y_test)


def test_condition_strings_are_canonical():
    got = conditions.parse_conditions(["clean", "noise:0.20", "imbalance:10.0", "noise:0.2", "noise-asym:.4"])
    assert got == ["clean", "noise:0.2", "imbalance:10", "noise-asym:0.4"]


@pytest.mark.parametrize(("text", "says"), [
    ("noise:1.5", "invalid condition 'noise:1.5': RATE must satisfy 0 <= RATE < 1"),
    ("noise:abc", "invalid condition 'noise:abc': RATE 'abc' is not a number"),
    ("imbalance:0.5", "invalid condition 'imbalance:0.5': RATIO must satisfy RATIO >= 1"),
    ("noise-asym:nan", "invalid condition 'noise-asym:nan': RATE must satisfy 0 <= RATE < 1"),
    ("foo", "unknown condition 'foo'"),
    ("noise", "condition 'noise' needs a value: noise:RATE"),
    ("zca:1", "condition 'zca' takes no value; got 'zca:1'"),
])
def test_bad_condition_is_one_line_naming_value_and_choices(ddb, tmp_path, text, says):
    from ddbench.errors import DDBenchError

    with pytest.raises(DDBenchError) as info:
        conditions.parse_conditions([text])
    assert str(info.value) == f"{says}; {conditions.VALID}"
    res = ddb("run", "--conditions", f"clean,{text}", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 2 and res.err == f"ddbench: error: {says}; {conditions.VALID}\n"
    assert not (tmp_path / "r.sqlite").exists()


def test_imbalance_too_strong_for_the_dataset_is_an_error(ddb, tmp_path):
    res = ddb("run", "--conditions", "imbalance:1000", "--store", str(tmp_path / "r.sqlite"))
    assert res.code == 2 and res.err.count("\n") == 1
    assert "condition imbalance:1000 leaves class '9' of digits without training images" in res.err


def test_seeded_conditions_give_each_seed_its_own_bundle(tmp_path):
    from ddbench.plan import RunOptions, prepare
    from ddbench.registry import load_registry

    opts = RunOptions(methods=["random"], ipcs=[1], seeds=[0, 1], conditions=["clean", "noise:0.2"],
                      data_root=tmp_path)
    prepared = prepare(opts, load_registry())
    by = {(j.condition, j.seed): prepared.bundle(j) for j in prepared.jobs}
    assert by[("clean", 0)] is by[("clean", 1)]
    assert not torch.equal(by[("noise:0.2", 0)].y_train, by[("noise:0.2", 1)].y_train)
    assert torch.equal(by[("noise:0.2", 0)].y_train, conditions.apply(by[("clean", 0)], "noise:0.2", tmp_path, 0).y_train)


def test_ipc_above_a_rare_class_is_capped_under_imbalance(tmp_path):
    from ddbench.builtins.distillers.random import init_synthetic, sample_real
    from ddbench.context import DistillContext

    data = conditions.apply(_digits(tmp_path), "imbalance:10", tmp_path, seed=0)
    counts = data.class_counts()  # 124 ... 12
    ctx = DistillContext(data, ipc=20, seed=0, device=torch.device("cpu"), objectives=[], build_model=None)
    expected = [min(20, n) for n in counts]
    assert ctx.class_ipcs() == expected and expected[-1] == counts[-1] < 20
    for how in ("real", "noise"):
        images, labels = init_synthetic(ctx, how, ctx.generator())
        assert torch.bincount(labels, minlength=10).tolist() == expected and len(images) == sum(expected)
    rare = sample_real(ctx, ctx.generator())
    last = rare.images[rare.labels == 9]  # all real images of the rarest class, each once
    assert len(last) == counts[-1] and len(torch.unique(last.flatten(1), dim=0)) == counts[-1]


def test_imbalance_run_with_a_large_ipc_warns_and_completes(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "random,dm,dc", "--ipc", "20", "--seeds", "0", "--conditions", "imbalance:10",
              "--set", "dc.iterations=1", "--set", "dc.outer_loop=1", "--store", str(store), *TINY)
    assert res.code == 0, res.err
    # n_max = 122 (the smallest digits class): classes 7, 8, 9 keep 20, 16, 12 images
    assert "ipc 20 exceeds 2 class(es) of digits [imbalance:10] (smallest: 12 training images" in res.err
    assert "each such class gets all its images, not 20" in res.err
    assert all(r["status"] == "ok" and r["conditions"] == "imbalance:10" for r in rows(store))
    # the same IPC on balanced data is still an error
    res = ddb("run", "--ipc", "200", "--conditions", "noise:0.2", "--store", str(store))
    assert res.code == 2 and "ipc 200 is larger than the smallest class of digits" in res.err


def test_conditions_and_models_end_to_end(ddb, tmp_path):
    store = tmp_path / "r.sqlite"
    res = ddb("run", "--methods", "random,dm", "--ipc", "1", "--seeds", "0", "--conditions", "clean,noise:0.2",
              "--models", "convnet,resnet18", "--store", str(store), *TINY)
    assert res.code == 0, res.err
    got = rows(store)
    assert {(r["method"], r["conditions"], r["model"]) for r in got} == {
        (m, c, n) for m in ("random", "dm") for c in ("clean", "noise:0.2") for n in ("convnet", "resnet18")}
    assert all(r["status"] == "ok" for r in got)
    assert len({r["distill_key"] for r in got}) == 4
    assert "digits [noise:0.2]" in res.out and "resnet18" in res.out
