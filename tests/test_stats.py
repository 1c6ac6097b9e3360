"""The statistics against scipy and textbook examples."""

import math

import numpy as np
import pytest
from scipy import stats as st

from ddbench.analysis import stats

# Demsar (2006, JMLR), Table 6: AUC of C4.5 variants on 14 data sets. The printed table
# ties C4.5+cf and C4.5+m+cf on 'voting' (0.975); the paper's ranks come from unrounded
# values in which C4.5+cf is ahead, so the tie is broken the same way here.
DEMSAR = np.array([
    [0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569], [0.954, 0.971, 0.968, 0.967],
    [0.628, 0.661, 0.654, 0.657], [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931],
    [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625], [0.775, 0.838, 0.866, 0.875],
    [1.000, 1.000, 1.000, 1.000], [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
    [0.972, 0.981, 0.97501, 0.975], [0.957, 0.978, 0.946, 0.970],
])


def test_friedman_matches_demsar_worked_example():
    r = stats.rank_test(DEMSAR, ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"])
    assert r.avg_ranks == pytest.approx([3.143, 2.000, 2.893, 1.964], abs=1e-3)
    assert r.chi2 == pytest.approx(9.28, abs=0.01)
    assert r.f_stat == pytest.approx(3.69, abs=0.01)
    assert r.cd == pytest.approx(1.25, abs=0.01)  # q_0.05 = 2.569 for k = 4
    # Demsar: no pair differs at 0.05; at 0.10 (CD 1.12) C4.5+m and C4.5+m+cf beat C4.5
    assert not (r.nemenyi < 0.05).any()
    assert stats.rank_test(DEMSAR, list("abcd"), alpha=0.10).cd == pytest.approx(1.12, abs=0.01)
    sig = np.argwhere(np.triu(r.nemenyi < 0.10))
    assert sig.tolist() == [[0, 1], [0, 3]]


def test_friedman_equals_scipy_without_ties():
    x = np.random.default_rng(0).normal(size=(9, 5))
    r = stats.rank_test(x, list("abcde"))
    ref = st.friedmanchisquare(*x.T)
    assert r.chi2 == pytest.approx(ref.statistic)
    assert r.p_chi2 == pytest.approx(ref.pvalue)


def test_rank_test_refuses_two_methods():
    r = stats.rank_test([[1, 2], [2, 3]], ["a", "b"])
    assert math.isnan(r.chi2) and "3+ methods" in r.note


def test_holm_hand_worked():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 by monotonicity), 0.04 (x1)
    assert stats.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert stats.holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = stats.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_unpaired_comparison_matches_scipy():
    a = {0: 0.91, 1: 0.93, 2: 0.92, 3: 0.95}
    b = {5: 0.88, 6: 0.90, 7: 0.89}
    c = stats.compare(a, b)
    xa, xb = list(a.values()), list(b.values())
    assert not c.paired and c.t_test == "Welch t"
    assert c.p_t == pytest.approx(st.ttest_ind(xa, xb, equal_var=False).pvalue)
    assert c.p_rank == pytest.approx(st.mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
    assert c.diff == pytest.approx(np.mean(xa) - np.mean(xb))
    # Hedges' g by hand: pooled std over 5 degrees of freedom, J = 1 - 3 / 19
    sp = math.sqrt((3 * np.var(xa, ddof=1) + 2 * np.var(xb, ddof=1)) / 5)
    assert c.hedges_g == pytest.approx(c.diff / sp * (1 - 3 / 19))
    assert c.boot_low < c.diff < c.boot_high
    assert stats.compare(a, b).boot_low == c.boot_low  # seeded


def test_paired_comparison_when_seeds_match():
    a = {0: 0.91, 1: 0.95, 2: 0.92, 3: 0.97, 4: 0.90}
    b = {0: 0.90, 1: 0.93, 2: 0.92, 3: 0.94, 4: 0.88}
    c = stats.compare(a, b)
    assert c.paired and c.t_test == "paired t"
    assert c.p_t == pytest.approx(st.ttest_rel(list(a.values()), list(b.values())).pvalue)
    assert c.p_rank == pytest.approx(st.wilcoxon(list(a.values()), list(b.values())).pvalue)
    d = np.array(list(a.values())) - np.array(list(b.values()))
    assert c.boot_low >= d.min() - 1e-12 and c.boot_high <= d.max() + 1e-12


def test_too_few_runs_gives_no_p_value():
    c = stats.compare({0: 0.9}, {0: 0.8})
    assert not c.tested and "too few runs" in c.note
    c = stats.compare({0: 0.9, 1: 0.9}, {0: 0.9, 1: 0.9})
    assert not c.tested and "no spread" in c.note


def test_describe_t_interval():
    s = stats.describe([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    half = st.t.ppf(0.975, 2) / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == pytest.approx((2 - half, 2 + half))
    assert math.isnan(stats.describe([1.0]).std)


def test_permutation_p_is_exact_where_f_is_infinite():
    # two cells ranking three methods identically: F is infinite, but under H0 the chance of
    # the second cell repeating the first's ordering is 1/3! (exact enumeration of 6^2 cases)
    r = stats.rank_test([[0.9, 0.8, 0.7], [0.95, 0.85, 0.75]], list("abc"))
    assert math.isinf(r.f_stat) and r.p_f == 0.0
    assert r.p_perm == pytest.approx(1 / 6)


def test_permutation_p_agrees_with_friedman_for_many_cells():
    x = np.random.default_rng(0).normal(size=(30, 4))
    x[:, 0] += 0.5
    r = stats.rank_test(x, list("abcd"))
    assert r.p_perm == pytest.approx(r.p_chi2, abs=0.02)  # Monte Carlo vs chi2, large N
    assert 0 < stats.friedman_permutation_p(x, n_perm=2000) < 1


def test_permutation_p_counts_ties_as_mid_ranks():
    # every cell a three-way tie: every arrangement gives the observed statistic, so p = 1
    assert stats.friedman_permutation_p([[1, 1, 1], [2, 2, 2]]) == 1.0
