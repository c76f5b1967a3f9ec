"""Power of the chi-square exactness checks: how many draws catch a given total-variation bias.

Pearson's statistic over m cells, under an alternative law b against the exact law e, is
approximately noncentral chi-square with df = m - 1 and noncentrality
    lambda = N * sum_i (b_i - e_i)^2 / e_i   (N draws).
By Cauchy-Schwarz, (sum_i |b_i - e_i|)^2 <= sum_i (b_i - e_i)^2 / e_i * sum_i e_i, so every
alternative at total variation delta has lambda >= 4 N delta^2, with equality for the least
favourable one (`least_favourable`: +-2 delta relative shifts on two halves of the mass).
Power grows with lambda at fixed df, so power(df, 4 N delta^2) is a lower bound over all
alternatives at TV >= delta (within the chi-square approximation, good when every cell
expects >= 5).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.stats import chi2, ncx2


def power(df: int, noncentrality: float, alpha: float) -> float:
    """P(reject at level alpha) when the statistic is noncentral chi-square(df, lambda)."""
    return float(ncx2.sf(chi2.isf(alpha, df), df, noncentrality))


def required_draws(df: int, tv: float, alpha: float, target: float) -> int:
    """Smallest N whose worst-case power against a TV-`tv` bias is >= target."""
    lo, hi = 1, 10**9
    while lo < hi:
        mid = (lo + hi) // 2
        if power(df, 4 * mid * tv * tv, alpha) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def pooled_draws(exact: np.ndarray, tv: float, alpha: float, target: float) -> int:
    """Draws for the pooled check (cells expecting < 5 merged into one bin) to catch every
    TV-`tv` bias between bins with probability >= target.

    The bins depend on N (more cells expect >= 5 as N grows, raising df): iterate
    N <- required_draws(df(N)) upward from df = 1 until it holds still.
    """
    exact = np.asarray(exact, dtype=float)
    draws = required_draws(1, tv, alpha, target)
    while True:
        bins = int((exact * draws >= 5).sum()) + int(((exact > 0) & (exact * draws < 5)).any())
        needed = required_draws(max(bins - 1, 1), tv, alpha, target)
        if needed <= draws:
            return draws
        draws = needed


def detectable_tv(df: int, draws: int, alpha: float, target: float) -> float:
    """Smallest TV caught with probability >= target by N draws (worst-case direction)."""
    return float(brentq(lambda tv: power(df, 4 * draws * tv * tv, alpha) - target, 1e-6, 1.0))


def noncentrality_lower_bound(statistic: float, df: int, confidence: float = 0.999) -> float:
    """lambda_lo with P(X >= statistic | lambda_lo) = 1 - confidence: a one-sided lower
    confidence bound on the noncentrality that produced an observed statistic."""
    if ncx2.sf(statistic, df, 1e-9) >= 1 - confidence:
        return 0.0
    return float(brentq(lambda lam: ncx2.sf(statistic, df, lam) - (1 - confidence),
                        1e-9, 10 * statistic + 100))


def least_favourable(exact: np.ndarray, tv: float) -> np.ndarray:
    """A law at total variation `tv` from `exact` with the smallest chi-square divergence:
    cells split into two halves of (nearly) equal mass, one scaled up, one down."""
    order = np.argsort(exact)
    mass = np.cumsum(exact[order])
    up = np.zeros(len(exact), dtype=bool)
    up[order[mass <= mass[-1] / 2]] = True
    m_up, m_down = exact[up].sum(), exact[~up].sum()
    return np.where(up, exact * (1 + tv / m_up), exact * (1 - tv / m_down))


def pearson(counts: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of counts against exact over cells with exact > 0.

    Expected counts use the total number of draws, so mass put on impossible cells shows up
    as a deficit; callers check those cells' counts are 0 separately.
    """
    keep = exact > 0
    draws = counts.sum()
    expected = draws * exact[keep]
    statistic = float((((counts[keep] - expected) ** 2) / expected).sum())
    return statistic, float(chi2.sf(statistic, keep.sum() - 1))
