"""Exponentially smoothed statistics and the weighted line fit the gamma policies share."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Smoothed:
    """A decayed sum / decayed count pair."""

    total: float = 0.0
    weight: float = 0.0

    def add(self, value: float, count: float, decay: float) -> None:
        self.total = decay * self.total + value
        self.weight = decay * self.weight + count

    def mean(self, default: float) -> float:
        return self.total / self.weight if self.weight > 1e-9 else default


@dataclass
class Acceptance:
    """alpha, the mean beta over recent drafted positions, starting from a prior worth
    `prior_weight` positions (so the first steps do not swing it to 0 or 1)."""

    prior: float
    prior_weight: float
    stat: Smoothed = field(init=False)

    def __post_init__(self) -> None:
        self.stat = Smoothed(self.prior * self.prior_weight, self.prior_weight)

    def add(self, beta_sum: float, positions: int, decay: float) -> None:
        self.stat.add(beta_sum, positions, decay)

    @property
    def value(self) -> float:
        # below 1: E(alpha, gamma) and the optimal gamma are finite
        return min(max(self.stat.mean(self.prior), 0.0), 0.999)


def observations(stats: dict[int, Smoothed]) -> list[tuple[int, float, float]]:
    """(k, mean, weight) of every key with weight."""
    return [(k, s.mean(0.0), s.weight) for k, s in stats.items() if s.weight > 1e-9]


def means(points: list[tuple[int, float, float]]) -> tuple[float, float]:
    w_sum = sum(w for _, _, w in points)
    return (sum(k * w for k, _, w in points) / w_sum, sum(t * w for _, t, w in points) / w_sum)


def fit_line(points: list[tuple[int, float, float]]) -> tuple[float, float] | None:
    """Weighted least squares (intercept, slope) of t over k; None with fewer than 2 k."""
    if len({k for k, _, _ in points}) < 2:
        return None
    k_mean, t_mean = means(points)
    var = sum(w * (k - k_mean) ** 2 for k, _, w in points)
    cov = sum(w * (k - k_mean) * (t - t_mean) for k, t, w in points)
    slope = cov / var
    return t_mean - slope * k_mean, slope


def fit_rising(points: list[tuple[int, float, float]]) -> tuple[float, float] | None:
    """fit_line, but a falling fit becomes the flat line through the mean: a wider pass or
    a longer draft cannot be cheaper, so a falling fit is noise."""
    fit = fit_line(points)
    if fit is None or fit[1] >= 0:
        return fit
    return means(points)[1], 0.0
