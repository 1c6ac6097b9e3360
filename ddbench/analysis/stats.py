"""Statistics for comparing methods: per-cell summaries, pairwise tests with Holm's
correction, and rank tests across cells (Friedman, Iman-Davenport, Nemenyi).

The tests come from scipy (scikit-posthocs for the Nemenyi post-hoc; the Friedman
statistic is Demsar's closed form from the average ranks); this module chooses the test,
pairs the runs and refuses to test what cannot be tested. Inputs are ``{unit id: value}`` maps so that pairing is explicit: two methods
are compared with paired tests exactly when they have the same unit ids (the same
distillation seeds, which in ddbench fix the real-image initialisation and the
evaluation seeds, so runs that share a seed share their randomness).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

#: fewer units than this per side (or pairs, when paired) and no test is run
MIN_N = 2
ALPHA = 0.05
N_BOOT = 10_000


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample std (ddof 1); nan when n < 2
    ci_low: float  # 95% t interval of the mean; nan when n < 2
    ci_high: float


def describe(values) -> Summary:
    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass
class Comparison:
    """A vs B in one cell. ``diff`` is mean(A) - mean(B); p-values are two-sided."""

    a: str
    b: str
    n_a: int
    n_b: int
    paired: bool
    diff: float
    t_test: str  # "Welch t" or "paired t"
    p_t: float
    rank_test: str  # "Mann-Whitney U" or "Wilcoxon signed-rank"
    p_rank: float
    hedges_g: float
    boot_low: float  # 95% percentile bootstrap interval of the mean difference
    boot_high: float
    note: str = ""  # why no test was run, when none was
    p_holm: float = math.nan  # filled by ``holm`` over the family the caller chooses
    cell: tuple = field(default=())

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p_t)


def compare(a: dict, b: dict, *, label_a: str = "A", label_b: str = "B", seed: int = 0,
            n_boot: int = N_BOOT) -> Comparison:
    """Test mean(A) against mean(B): paired t and Wilcoxon when A and B have the same unit
    ids, else Welch's t and Mann-Whitney U; Hedges' g with the pooled std; a seeded
    percentile bootstrap interval of the difference (of the paired differences when paired)."""
    paired = set(a) == set(b)
    if paired:
        ids = sorted(a)
        xa = np.array([a[i] for i in ids], dtype=float)
        xb = np.array([b[i] for i in ids], dtype=float)
    else:
        xa = np.array(list(a.values()), dtype=float)
        xb = np.array(list(b.values()), dtype=float)
    nan = math.nan
    out = Comparison(label_a, label_b, len(xa), len(xb), paired,
                     float(xa.mean() - xb.mean()) if len(xa) and len(xb) else nan,
                     "paired t" if paired else "Welch t", nan,
                     "Wilcoxon signed-rank" if paired else "Mann-Whitney U", nan,
                     nan, nan, nan)
    if min(len(xa), len(xb)) < MIN_N:
        out.note = f"too few runs for a test (n = {len(xa)} vs {len(xb)}; need {MIN_N}+ each)"
        return out
    out.hedges_g = hedges_g(xa, xb)
    spread = np.std(xa - xb) if paired else max(np.std(xa), np.std(xb))
    if spread == 0:
        out.note = "no spread (identical values); no test"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-n and tie warnings: the p-values say enough
        if paired:
            d = xa - xb
            out.p_t = float(stats.ttest_rel(xa, xb).pvalue)
            out.p_rank = float(stats.wilcoxon(xa, xb).pvalue) if np.any(d != 0) else 1.0
            boot = stats.bootstrap((d,), np.mean, n_resamples=n_boot, method="percentile",
                                   random_state=np.random.default_rng(seed))
        else:
            out.p_t = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
            out.p_rank = float(stats.mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
            boot = stats.bootstrap((xa, xb), _mean_diff, n_resamples=n_boot, method="percentile",
                                   vectorized=True, random_state=np.random.default_rng(seed))
    out.boot_low, out.boot_high = (float(v) for v in boot.confidence_interval)
    return out


def _mean_diff(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def hedges_g(xa, xb) -> float:
    """Cohen's d with the pooled sample std, times the small-sample correction
    J = 1 - 3 / (4 (n_a + n_b) - 9) (Hedges and Olkin 1985)."""
    xa, xb = np.asarray(xa, float), np.asarray(xb, float)
    na, nb = len(xa), len(xb)
    pooled = math.sqrt(((na - 1) * xa.var(ddof=1) + (nb - 1) * xb.var(ddof=1)) / (na + nb - 2))
    diff = float(xa.mean() - xb.mean())
    if pooled == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / pooled * (1 - 3 / (4 * (na + nb) - 9))


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (nan entries are left out of the family)."""
    p = [float(v) for v in pvalues]
    idx = sorted((i for i, v in enumerate(p) if not math.isnan(v)), key=lambda i: p[i])
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def apply_holm(comparisons: list[Comparison]) -> None:
    """Fill ``p_holm`` of each comparison, the family being all tested ones given."""
    for c, ph in zip(comparisons, holm([c.p_t for c in comparisons]), strict=True):
        c.p_holm = ph


@dataclass
class RankTest:
    """Friedman test over blocks (cells) x methods, with Demsar's (2006) follow-ups."""

    methods: list[str]
    n_blocks: int
    avg_ranks: list[float]  # 1 = best (highest value)
    chi2: float  # Friedman statistic from the average ranks (Demsar's eq., no tie correction)
    p_chi2: float
    f_stat: float  # Iman-Davenport F
    p_f: float
    cd: float  # Nemenyi critical difference at ALPHA
    nemenyi: np.ndarray  # pairwise p-values (scikit-posthocs), methods x methods
    note: str = ""
    #: Friedman p-value from the permutation distribution (exact when it is small enough to
    #: enumerate): the chi2 and F approximations are poor with few cells (Demsar uses N >= 10)
    p_perm: float = math.nan


def _cell_ranks(x: np.ndarray) -> np.ndarray:
    """Each cell's (row's) ranks of the methods, 1 = highest value, ties at mid-ranks."""
    return np.apply_along_axis(lambda row: stats.rankdata(-row), 1, x)


def rank_test(matrix, methods: list[str], alpha: float = ALPHA) -> RankTest:
    """Average ranks, Friedman chi2 and Iman-Davenport F, the Nemenyi critical difference
    q_alpha * sqrt(k (k + 1) / (6 N)) and the Nemenyi pairwise p-values.
    ``matrix`` is blocks x methods, higher is better."""
    x = np.asarray(matrix, dtype=float)
    n, k = x.shape
    ranks = _cell_ranks(x).mean(axis=0)
    nan = math.nan
    result = RankTest(list(methods), n, [float(r) for r in ranks], nan, nan, nan, nan, nan,
                      np.full((k, k), nan))
    if k < 3 or n < 2:
        result.note = (f"a rank test needs 3+ methods over 2+ cells with every method present "
                       f"(have {k} method(s) x {n} cell(s))")
        return result
    # Demsar's form; equal to scipy.stats.friedmanchisquare when no block has ties
    # (scipy also corrects for ties, which would make Demsar's worked example disagree)
    result.chi2 = float(12 * n / (k * (k + 1)) * (np.sum(ranks**2) - k * (k + 1) ** 2 / 4))
    result.p_chi2 = float(stats.chi2.sf(result.chi2, k - 1))
    if n * (k - 1) - result.chi2 > 0:
        result.f_stat = (n - 1) * result.chi2 / (n * (k - 1) - result.chi2)
        result.p_f = float(stats.f.sf(result.f_stat, k - 1, (k - 1) * (n - 1)))
    else:  # perfect agreement across blocks
        result.f_stat, result.p_f = math.inf, 0.0
    result.p_perm = friedman_permutation_p(x)
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    result.cd = q * math.sqrt(k * (k + 1) / (6 * n))
    import scikit_posthocs as sp

    result.nemenyi = sp.posthoc_nemenyi_friedman(x).to_numpy()
    return result


#: enumerate the (k!)^N within-cell orderings up to this many, else sample this many
N_PERM = 20_000


def friedman_permutation_p(matrix, n_perm: int = N_PERM, seed: int = 0) -> float:
    """P(sum of squared average ranks >= observed) when every cell's ranking is an independent,
    uniformly random ordering of its values (H0 of the Friedman test); ties keep their mid-ranks.
    Exact by enumeration when (k!)^N <= ``n_perm``, else a Monte Carlo estimate (seeded,
    counting the observed arrangement). With 2 cells that agree perfectly the F statistic is
    infinite, while this p-value is the honest 1/k!."""
    x = np.asarray(matrix, dtype=float)
    n, k = x.shape
    ranks = _cell_ranks(x)
    observed = float(np.sum(ranks.mean(axis=0) ** 2))
    tol = 1e-9 * max(1.0, observed)
    if math.factorial(k) ** n <= n_perm:  # exact: every combination of per-cell orderings
        perms = np.array(list(itertools.permutations(range(k))))
        totals = np.zeros((1, k))
        for row in ranks:
            totals = (totals[:, None, :] + row[perms][None, :, :]).reshape(-1, k)
        stat = np.sum((totals / n) ** 2, axis=1)
        return float(np.mean(stat >= observed - tol))
    rng, hits = np.random.default_rng(seed), 0
    for start in range(0, n_perm, 1000):  # chunks keep memory small with many cells
        m = min(1000, n_perm - start)
        idx = np.argsort(rng.random((m, n, k)), axis=2)
        totals = np.take_along_axis(np.broadcast_to(ranks, (m, n, k)), idx, axis=2).sum(axis=1)
        hits += int(np.sum(np.sum((totals / n) ** 2, axis=1) >= observed - tol))
    return (1 + hits) / (1 + n_perm)


#: assumed number of evaluation runs behind a published mean whose n the paper does not give
#: (5 networks is the usual ``num_eval`` of DC/DSA/DM/MTT evaluations)
ASSUMED_N = 5


@dataclass
class Shortfall:
    """Ours against a baseline: is ours worse than the baseline by more than a tolerance?

    H0: mean(ours) >= mean(baseline) - tolerance; a small one-sided ``p`` is evidence of a
    regression. Welch's t from both sides' mean, std and n (a side without a spread borrows
    the other's, with its degrees of freedom; said in ``note``)."""

    delta: float  # mean(ours) - mean(baseline)
    se: float
    df: float
    p: float  # nan when untested
    note: str = ""
    p_holm: float = math.nan

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)


def shortfall(ours: tuple[int, float, float], base: tuple[int | None, float, float],
              tolerance: float) -> Shortfall:
    """``ours`` and ``base`` are (n, mean, std); std nan = unknown, n None = unknown
    (taken as ``ASSUMED_N``). One-sided Welch t of mean(ours) - mean(base) + tolerance."""
    (na, ma, sa), (nb, mb, sb) = ours, base
    notes = []
    if nb is None:
        nb = ASSUMED_N
        notes.append(f"baseline n assumed {ASSUMED_N}")
    delta = ma - mb
    known_a = na >= 2 and not math.isnan(sa)
    known_b = nb >= 2 and not math.isnan(sb)
    if not known_a and not known_b:
        return Shortfall(delta, math.nan, math.nan, math.nan,
                         "; ".join(notes + ["no spread on either side (n < 2 and no std); no test"]))
    if known_a and known_b:
        va, vb = sa * sa / na, sb * sb / nb
        se2 = va + vb
        denom = (va * va / (na - 1) if na > 1 else 0) + (vb * vb / (nb - 1) if nb > 1 else 0)
        df = se2 * se2 / denom if denom > 0 else float(na + nb - 2)
    else:
        s, dof, side = (sa, na - 1, "ours") if known_a else (sb, nb - 1, "the baseline's")
        se2 = s * s / na + s * s / nb
        df = float(dof)
        notes.append(f"spread borrowed from {side}")
    se = math.sqrt(se2)
    if se == 0:
        p = 0.0 if delta < -tolerance else 1.0
    else:
        p = float(stats.t.cdf((delta + tolerance) / se, df))
    return Shortfall(delta, se, df, p, "; ".join(notes))
