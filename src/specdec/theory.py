"""The paper's section 3 as plain functions: no torch, no models.

alpha: expected acceptance rate E[beta]; gamma: draft length; c: cost of one drafter step
relative to one target step; v: cost of a (gamma+1)-token target pass relative to a 1-token one
(Theorem 3.8 assumes v = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from specdec.errors import UsageError


def _check(alpha: float, gamma: int | None = None, c: float | None = None) -> None:
    if not 0 <= alpha < 1:
        raise UsageError(f"alpha must be in [0, 1), got {alpha}")
    if gamma is not None and (not isinstance(gamma, int) or gamma < 0):
        raise UsageError(f"gamma must be an integer >= 0, got {gamma!r}")
    if c is not None and c < 0:
        raise UsageError(f"c must be >= 0, got {c}")


def expected_tokens(alpha: float, gamma: int) -> float:
    """E[tokens per target call] = (1 - alpha^(gamma+1)) / (1 - alpha)  (eq. 1)."""
    _check(alpha, gamma)
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def speedup(alpha: float, gamma: int, c: float, v: float = 1.0) -> float:
    """Expected wall-clock improvement S = E / (gamma*c + v)  (Theorem 3.8 when v = 1)."""
    _check(alpha, gamma, c)
    return expected_tokens(alpha, gamma) / (gamma * c + v)


def operations_factor(alpha: float, gamma: int, c_hat: float = 0.0) -> float:
    """Expected arithmetic operations relative to plain decoding (Theorem 3.11).

    (1 - alpha)(gamma*c_hat + gamma + 1) / (1 - alpha^(gamma+1)); c_hat is the drafter's
    operations per token relative to the target's.
    """
    _check(alpha, gamma, c_hat)
    return (gamma * c_hat + gamma + 1) / expected_tokens(alpha, gamma)


def optimal_gamma(alpha: float, c: float, max_gamma: int = 64,
                  v: float | list[float] | None = None) -> int:
    """Integer gamma in [0, max_gamma] maximising S; 0 means plain decoding wins.

    v may be one cost for all gammas or a list indexed by gamma (measured verify costs).
    """
    _check(alpha, None, c)
    return max(range(max_gamma + 1), key=lambda g: speedup(alpha, g, c, _v_at(v, g)))


def _v_at(v: float | list[float] | None, gamma: int) -> float:
    if v is None:
        return 1.0
    if isinstance(v, int | float):
        return float(v)
    return float(v[min(gamma, len(v) - 1)])


def speedup_possible(alpha: float, c: float) -> bool:
    """Corollary 3.9: some gamma gives S > 1 iff alpha > c."""
    _check(alpha, None, c)
    return alpha > c


@dataclass(frozen=True)
class TheoryRow:
    gamma: int
    expected_tokens: float
    speedup: float
    operations: float


def table(alpha: float, c: float, gammas: range | list[int], c_hat: float | None = None,
          v: float = 1.0) -> list[TheoryRow]:
    """S, E and the operations factor over gammas (c_hat defaults to c)."""
    c_hat = c if c_hat is None else c_hat
    return [TheoryRow(g, expected_tokens(alpha, g), speedup(alpha, g, c, v),
                      operations_factor(alpha, g, c_hat)) for g in gammas]
