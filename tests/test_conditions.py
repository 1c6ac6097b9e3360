"""Data conditions: ZCA whitening (MTT's), in keys, rows, tables and expert buffers."""

from __future__ import annotations

import pytest
import torch
from conftest import rows

from ddbench import conditions
from ddbench.conditions import ZCA, ZCA_EPS


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
    from ddbench.data.builtin import Digits

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
              "--store", str(store), "--quiet")
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
    assert res.err.strip() == "ddbench: error: unknown condition 'blur'; valid choices: clean, zca"
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize("condition", ["clean", "zca"])
def test_condition_changes_the_key_only_when_not_clean(ddb, tmp_path, condition):
    res = ddb("run", "--methods", "random", "--ipc", "1", "--seeds", "0", "--conditions", condition,
              "--dry-run")
    assert res.code == 0
    assert ("digits [zca]" in res.out) == (condition == "zca")
