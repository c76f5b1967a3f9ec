"""A gamma policy that measures alpha, c and the verify cost online and maximises S.

Per request it keeps exponentially smoothed estimates of
  alpha  mean beta = sum_x min(p, q) over the drafted positions that were examined,
  c      drafter time per drafted token / target time of a 1-token pass,
  v(k)   target time of a (k+1)-token pass / a 1-token pass (a line a + b*k fitted online),
and drafts gamma = argmax S = E(alpha, gamma) / (gamma*c + v(gamma)) (theory.optimal_gamma).
When that is 0 (no speedup possible) it decodes plainly and probes with a short draft now and
then, backing off while probes keep failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.controller import StepRecord
from specdec.theory import optimal_gamma


@dataclass
class ControllerConfig:
    max_gamma: int = 16
    initial_gamma: int = 4  # used until the first observations arrive
    prior_alpha: float = 0.6
    prior_weight: float = 2.0  # pseudo-positions behind the prior alpha
    decay: float = 0.9  # per step; ~10 steps of memory
    verify_slope: float = 0.03  # prior extra cost per drafted token, fraction of a 1-token pass
    probe_gamma: int = 2
    probe_every: int = 8  # plain steps before the first probe; doubles after each failed one
    max_probe_every: int = 64


@dataclass
class _Smoothed:
    """A decayed sum / decayed count pair."""

    total: float = 0.0
    weight: float = 0.0

    def add(self, value: float, count: float, decay: float) -> None:
        self.total = decay * self.total + value
        self.weight = decay * self.weight + count

    def mean(self, default: float) -> float:
        return self.total / self.weight if self.weight > 1e-9 else default


@dataclass
class GammaController:
    """GammaPolicy: choose() before each step, observe(StepRecord) after it."""

    config: ControllerConfig = field(default_factory=ControllerConfig)

    def __post_init__(self) -> None:
        cfg = self.config
        self.alpha_stat = _Smoothed(cfg.prior_alpha * cfg.prior_weight, cfg.prior_weight)
        self.draft_time = _Smoothed()  # drafter seconds per drafted token
        self.target_time: dict[int, _Smoothed] = {}  # k drafted -> seconds per target pass
        self.plain_steps = 0
        self.probe_every = cfg.probe_every
        self.probing = False
        self.last_gamma = cfg.initial_gamma

    # --- the policy -----------------------------------------------------------------------

    def choose(self) -> int:
        gamma = self.best_gamma()
        self.probing = False
        if gamma == 0:
            self.plain_steps += 1
            if self.plain_steps > self.probe_every:
                self.plain_steps = 0
                self.probe_every = min(2 * self.probe_every, self.config.max_probe_every)
                self.probing = True
                gamma = self.config.probe_gamma
        else:
            self.plain_steps = 0
            self.probe_every = self.config.probe_every
        self.last_gamma = gamma
        return gamma

    def observe(self, step: StepRecord) -> None:
        decay = self.config.decay
        self.target_time.setdefault(step.drafted, _Smoothed()).add(step.target_s, 1, decay)
        if step.drafted == 0:
            return  # nothing drafted (plain step, or the drafter found nothing): no alpha info
        self.alpha_stat.add(sum(step.betas), len(step.betas), decay)
        self.draft_time.add(step.drafter_s, step.drafted, decay)
        if self.probing and step.betas and sum(step.betas) / len(step.betas) > self.c:
            self.probe_every = self.config.probe_every  # promising probe: stop backing off

    # --- estimates ------------------------------------------------------------------------

    @property
    def alpha(self) -> float:
        return min(max(self.alpha_stat.mean(self.config.prior_alpha), 0.0), 0.999)

    def verify_costs(self) -> list[float]:
        """v(k) for k = 0..max_gamma from the fitted target time a + b*k, v(0) = 1."""
        a, b = self._target_line()
        return [1.0 + b / a * k for k in range(self.config.max_gamma + 1)]

    @property
    def c(self) -> float:
        if self.draft_time.weight <= 1e-9:
            return 0.0
        a, _ = self._target_line()
        return self.draft_time.mean(0.0) / a

    def best_gamma(self) -> int:
        if self.draft_time.weight <= 1e-9 or not self.target_time:
            return self.config.initial_gamma
        return optimal_gamma(self.alpha, self.c, self.config.max_gamma, self.verify_costs())

    def _target_line(self) -> tuple[float, float]:
        """(a, b) with target time ~ a + b*k, weighted least squares over the observed k."""
        points = [(k, s.mean(0.0), s.weight) for k, s in self.target_time.items() if s.weight]
        slope_prior = self.config.verify_slope
        if len({k for k, _, _ in points}) < 2:
            k, t, _ = points[0] if points else (0, 1.0, 1.0)
            a = max(t, 1e-9) / (1 + slope_prior * k)
            return a, slope_prior * a
        w_sum = sum(w for _, _, w in points)
        k_mean = sum(k * w for k, _, w in points) / w_sum
        t_mean = sum(t * w for _, t, w in points) / w_sum
        var = sum(w * (k - k_mean) ** 2 for k, _, w in points)
        cov = sum(w * (k - k_mean) * (t - t_mean) for k, t, w in points)
        b = max(cov / var, 0.0)
        a = t_mean - b * k_mean
        if a <= 1e-9:  # noisy fit: fall back to the prior slope through the mean
            a = max(t_mean, 1e-9) / (1 + slope_prior * k_mean)
            b = slope_prior * a
        return a, b
