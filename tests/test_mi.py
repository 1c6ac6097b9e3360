"""MI estimators: known-MI Gaussians with a trained critic, a slow reference on fixed scores,
the InfoNCE ceiling, stability, and MINE/JSD gradients."""

import math

import pytest
import torch

from ddbench.builtins import mi_estimators as mi

ESTIMATORS = {cls.name: cls for cls in mi.BUILTIN}


def gaussian_pairs(n, dim, rho, gen):
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return x, y


class QuadraticCritic(torch.nn.Module):
    """f(x, y) = a|x|^2 + b|y|^2 + c<x, y> + e: contains log p(x,y)/(p(x)p(y)) of the Gaussians."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))

    def forward(self, x, y):
        a, b, c, e = self.w
        return a * (x**2).sum(1, keepdim=True) + b * (y**2).sum(1)[None, :] + c * x @ y.T + e


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_trained_critic_recovers_known_mi(name):
    """I = -d/2 log(1 - rho^2) = 1 nat; K = 128 pairs per batch; positives on the diagonal."""
    dim, true_mi, k = 4, 1.0, 128
    rho = math.sqrt(1 - math.exp(-2 * true_mi / dim))
    gen = torch.Generator().manual_seed(0)
    critic = QuadraticCritic()
    est = ESTIMATORS[name]()
    opt = torch.optim.Adam(critic.parameters(), lr=0.05)
    positive = torch.eye(k, dtype=torch.bool)
    for _ in range(400):
        x, y = gaussian_pairs(k, dim, rho, gen)
        loss = -est.estimate(critic(x, y), positive)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        values = [float(est.estimate(critic(*gaussian_pairs(k, dim, rho, gen)), positive)) for _ in range(100)]
    value = sum(values) / len(values)
    ceiling = est.ceiling(positive)
    if ceiling is not None:
        assert ceiling == pytest.approx(math.log(k))
        assert max(values) <= ceiling + 1e-9
    if name == "nce":
        # log N + J holds for any critic; at the optimum its negatives' term costs
        # N E_Q[log(1 - h*)] ~ -E_Q[p/q] = -1 nat, so it lands near I - 1
        assert abs(value - (true_mi - 1)) < 0.15, value
    else:
        assert abs(value - true_mi) < 0.12, (name, value)


def slow(name, scores, positive):
    """Direct float64 loops of each bound (the marginal = all pairs)."""
    s = scores.tolist()
    pos = positive.tolist()
    a, b = len(s), len(s[0])
    allv = [v for row in s for v in row]
    pv = [s[i][j] for i in range(a) for j in range(b) if pos[i][j]]
    mean_exp_all = sum(math.exp(v) for v in allv) / len(allv)
    if name == "infonce":
        per = []
        for i in range(a):
            js = [j for j in range(b) if pos[i][j]]
            if js:
                den = sum(math.exp(v) for v in s[i]) / b
                per.append(sum(math.log(math.exp(s[i][j]) / den) for j in js) / len(js))
        return sum(per) / len(per)
    if name == "nwj":
        return sum(pv) / len(pv) - mean_exp_all / math.e
    if name == "jsd":
        return sum(pv) / len(pv) + 1 - mean_exp_all
    if name == "mine":
        return sum(pv) / len(pv) - math.log(mean_exp_all)
    if name == "nce":
        z = mean_exp_all * b  # CRD's Z with M = the number of candidates
        per = []
        for i in range(a):
            js = [j for j in range(b) if pos[i][j]]
            if js:
                h = [math.exp(v) / z / (math.exp(v) / z + 1.0) for v in s[i]]
                per.append(math.log(b) + sum(math.log(h[j]) for j in js) / len(js)
                           + sum(math.log(1 - hv) for hv in h))
        return sum(per) / len(per)
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_match_a_direct_implementation(name):
    gen = torch.Generator().manual_seed(1)
    syn_y = torch.tensor([0, 1, 2, 0, 1, 2])
    real_y = torch.randint(0, 3, (20,), generator=gen)
    positive = syn_y[:, None] == real_y[None, :]
    scores = torch.randn(6, 20, generator=gen, dtype=torch.float64) * 2
    got = float(ESTIMATORS[name]().estimate(scores, positive))
    assert got == pytest.approx(slow(name, scores, positive), rel=1e-9, abs=1e-9)


def test_infonce_class_level_ceiling_is_log_c():
    """With balanced classes a perfect critic reaches log C, not log K."""
    labels = torch.arange(5).repeat(8)  # 40 candidates, 8 per class
    positive = labels[:5, None] == labels[None, :]
    scores = torch.where(positive, 30.0, -30.0).double()
    est = mi.InfoNCE()
    assert est.ceiling(positive) == pytest.approx(math.log(5))
    assert float(est.estimate(scores, positive)) == pytest.approx(math.log(5), abs=1e-6)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_are_finite_for_huge_scores(name):
    positive = torch.eye(8, dtype=torch.bool)
    scores = torch.full((8, 8), -500.0)
    scores[positive] = 800.0
    scores.requires_grad_(True)
    value = ESTIMATORS[name]().estimate(scores, positive)
    if name in ("nwj", "jsd"):  # E_Q[e^(f-1)] overflows honestly: inf, never NaN from exp/log
        assert not torch.isnan(value)
    else:
        assert torch.isfinite(value)
        value.backward()
        assert torch.isfinite(scores.grad).all()


def test_mine_gradient_uses_the_moving_average():
    positive = torch.eye(4, dtype=torch.bool)
    est = mi.MINE(mi.MINE.Params(alpha=0.5))
    first = torch.zeros(4, 4, dtype=torch.float64)
    est.estimate(first, positive)  # running mean of e^T = 1
    scores = torch.full((4, 4), math.log(3.0), dtype=torch.float64, requires_grad=True)
    est.estimate(scores, positive).backward()
    running = 0.5 * 1 + 0.5 * 3  # updated before use, as mine-pytorch
    expected_offdiag = -3.0 / running / 16
    assert scores.grad[0, 1].item() == pytest.approx(expected_offdiag)
    assert scores.grad[0, 0].item() == pytest.approx(1 / 4 + expected_offdiag)


def test_jsd_value_is_nwj_at_t_plus_one_and_gradient_is_js():
    gen = torch.Generator().manual_seed(2)
    positive = torch.eye(5, dtype=torch.bool)
    scores = torch.randn(5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    value = mi.JSD().estimate(scores, positive)
    assert value.item() == pytest.approx(mi.NWJ().estimate(scores + 1, positive).item())
    value.backward()
    ref = scores.detach().clone().requires_grad_(True)
    js = (-torch.nn.functional.softplus(-ref[positive]).mean() - torch.nn.functional.softplus(ref).mean())
    js.backward()
    assert torch.allclose(scores.grad, ref.grad)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="no positive"):
        mi.InfoNCE().estimate(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool mask"):
        mi.NWJ().estimate(torch.zeros(2, 2), torch.eye(3, dtype=torch.bool))


def test_nce_normaliser_first_batch_or_every_batch():
    positive = torch.eye(4, dtype=torch.bool)
    a = torch.zeros(4, 4, dtype=torch.float64)
    b = torch.full((4, 4), 3.0, dtype=torch.float64)
    b[positive] = 5.0
    every, first = mi.NCE(), mi.NCE(mi.NCE.Params(normalizer="first"))
    assert float(every.estimate(a, positive)) == float(first.estimate(a, positive))
    assert float(every.estimate(b, positive)) == pytest.approx(slow("nce", b, positive))
    # CRD's Z stays at the first batch's mean e^0 = 1: h = e^s / (e^s + N)
    h = [[math.exp(v) / (math.exp(v) + 4) for v in row] for row in b.tolist()]
    expected = math.log(4) + sum(math.log(h[i][i]) + sum(math.log(1 - x) for x in h[i]) for i in range(4)) / 4
    assert float(first.estimate(b, positive)) == pytest.approx(expected)
    assert float(first.estimate(b, positive)) < float(every.estimate(b, positive)) - 1
