"""A gamma policy that measures alpha, c and the verify cost online and maximises S.

Per request it keeps exponentially smoothed estimates of
  alpha  mean beta = sum_x min(p, q) over the drafted positions that were examined,
  c      drafter time per drafted token / target time of a 1-token pass,
  v(k)   target time of a (k+1)-token pass / a 1-token pass (a line a + b*k fitted online),
and drafts gamma = argmax S = E(alpha, gamma) / (gamma*c + v(gamma)) (theory.optimal_gamma).
The drafter's time per step is fitted as a line too, d0 + d1*k: c = d1 / a, and the fixed part
d0 (re-syncing a cache, re-tokenizing) is charged to every gamma > 0 through v, so it is not
mistaken for a per-token cost that would push gamma down.
When that is 0 (no speedup possible) it decodes plainly and probes with a short draft now and
then, backing off while probes keep failing.

The cost that speculation must beat is a plain step's, so it is measured, not extrapolated: a
controller that always speculates never times a 1-token pass, and the intercept of a line fitted
to wide passes only (one width, where the prior slope is assumed, or a stale wide point) can be
many times off, making a gamma that is slower than plain look faster. So the times of widths not
verified lately fade (`stale_decay` per step: the line follows the widths in use when costs
change), a plain step is taken whenever the 1-token time's weight has faded below
`plain_weight` (about one step in 120 while speculating; steps where the drafter found nothing
measure it too), and the cost line is anchored at the measured 1-token time (a = that time, b
the weighted least-squares slope through it). The tree budget controller (control/budget.py)
extends this class and inherits all three.

Where a block width has been observed, v takes that width's own measured time instead of the
line: a forward's cost need not be linear in its width (matrix kernels choose their blocking
by the number of rows, so one width may cost barely more than a 1-token pass and the next
nearly two). The timings describe the models, not the request,
so `ModelCosts` may be shared by every generation of a decoder (`control.budget.AutoPolicies`,
what `--gamma auto` builds, does): a new request then starts from what earlier ones measured
instead of from the priors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.control.policy import StepRecord
from specdec.control.probe import ProbeBackoff
from specdec.control.smoothing import Acceptance, Smoothed, fit_rising, means, observations
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
    observed_weight: float = 1.0  # decayed observations of a width before its own time is used
    stale_decay: float = 0.99  # per step, for the target times of widths not verified then
    plain_weight: float = 0.3  # a plain step when the 1-token time's weight fades below this


@dataclass
class ModelCosts:
    """Timings of the target and the drafter: one instance may serve many generations."""

    draft_time: Smoothed = field(default_factory=Smoothed)  # drafter s per drafted token
    draft_steps: dict[int, Smoothed] = field(default_factory=dict)  # k -> drafter s per step
    target_time: dict[int, Smoothed] = field(default_factory=dict)  # k -> s per target pass


@dataclass
class GammaController:
    """GammaPolicy: choose() before each step, observe(StepRecord) after it."""

    config: ControllerConfig = field(default_factory=ControllerConfig)
    costs: ModelCosts = field(default_factory=ModelCosts)

    def __post_init__(self) -> None:
        cfg = self.config
        self.acceptance = Acceptance(cfg.prior_alpha, cfg.prior_weight)
        self.backoff = ProbeBackoff(cfg.probe_every, cfg.max_probe_every)
        self.probing = False  # the step choose() gave is a probe

    # --- the policy -----------------------------------------------------------------------

    def choose(self) -> int:
        gamma = self.best_gamma()
        self.probing = self.backoff.probe(gamma)
        if self.probing:
            gamma = self.config.probe_gamma
        if gamma > 0 and self.plain_is_stale():
            gamma, self.probing = 0, False  # measure plain decoding: the baseline to beat
        return gamma

    def plain_is_stale(self) -> bool:
        """Whether the 1-token time needs measuring (after the first step: that step's own
        plain time, or its drafts' width, tells the line where it stands)."""
        times = self.costs.target_time
        weight = times[0].weight if 0 in times else 0.0
        return bool(times) and weight < self.config.plain_weight  # plain_weight 0: never

    def observe(self, step: StepRecord) -> None:
        decay = self.config.decay
        # timings of widths not seen lately fade, so the cost line follows the widths in use
        # when the machine's costs change (a width's time updates only when it is verified;
        # stale ones would pin the line) and the plain time's weight tells when to re-measure
        for width, seconds in self.costs.target_time.items():
            if width != step.drafted:
                seconds.total *= self.config.stale_decay
                seconds.weight *= self.config.stale_decay
        self.costs.target_time.setdefault(step.drafted, Smoothed()).add(step.target_s, 1, decay)
        if step.drafted == 0:
            return  # nothing drafted (plain step, or the drafter found nothing): no alpha info
        self.acceptance.add(sum(step.betas), len(step.betas), decay)
        self.costs.draft_time.add(step.drafter_s, step.drafted, decay)
        self.costs.draft_steps.setdefault(step.drafted, Smoothed()).add(step.drafter_s, 1, decay)
        if self.probing and step.betas and sum(step.betas) / len(step.betas) > self.c:
            self.backoff.reset()

    # --- estimates ------------------------------------------------------------------------

    @property
    def alpha(self) -> float:
        return self.acceptance.value

    def verify_costs(self) -> list[float]:
        """v(k) for k = 0..max_gamma, v(0) = 1: a width's own measured time where it has been
        observed, else the fitted target time a + b*k."""
        a, b = self._target_line()
        costs = [1.0 + b / a * k for k in range(self.config.max_gamma + 1)]
        for k, seconds, weight in observations(self.costs.target_time):
            if 0 < k < len(costs) and weight >= self.config.observed_weight:
                costs[k] = max(seconds / a, 1.0)
        return costs

    @property
    def c(self) -> float:
        """Drafter cost per drafted token (the slope d1) over a 1-token target pass."""
        if self.costs.draft_time.weight <= 1e-9:
            return 0.0
        return self._drafter_line()[1] / self._target_line()[0]

    @property
    def fixed_draft_cost(self) -> float:
        """The drafter's per-step cost d0 over a 1-token target pass."""
        if self.costs.draft_time.weight <= 1e-9:
            return 0.0
        return self._drafter_line()[0] / self._target_line()[0]

    def best_gamma(self) -> int:
        if self.costs.draft_time.weight <= 1e-9 or not self.costs.target_time:
            return self.config.initial_gamma
        fixed = self.fixed_draft_cost
        costs = [v + (fixed if k else 0.0) for k, v in enumerate(self.verify_costs())]
        return optimal_gamma(self.alpha, self.c, self.config.max_gamma, costs)

    def _target_line(self) -> tuple[float, float]:
        """(a, b) with target time ~ a + b*k: a is the measured 1-token time where there is
        one (the baseline; a fit's intercept can be pulled far off by wide points), b the
        weighted least-squares slope through it; without one, a weighted fit over the k."""
        plain = self.costs.target_time.get(0)
        if plain is not None and plain.weight > 1e-9:
            return self._line_through(max(plain.mean(0.0), 1e-9))
        points = observations(self.costs.target_time)
        slope_prior = self.config.verify_slope
        fit = fit_rising(points)
        if fit is None or fit[0] <= 1e-9:  # one k, or a noisy fit: prior slope through the mean
            k_mean, t_mean = means(points) if points else (0.0, 1.0)
            a = max(t_mean, 1e-9) / (1 + slope_prior * k_mean)
            return a, slope_prior * a
        return fit

    def _line_through(self, a: float) -> tuple[float, float]:
        """(a, b): the weighted least-squares slope b >= 0 of the wide passes through (0, a)."""
        points = [(k, t, w) for k, t, w in observations(self.costs.target_time) if k > 0]
        moment = sum(w * k * k for k, _, w in points)
        if moment <= 1e-12:
            return a, self.config.verify_slope * a
        return a, max(sum(w * k * (t - a) for k, t, w in points) / moment, 0.0)

    def _drafter_line(self) -> tuple[float, float]:
        """(d0, d1) with drafter time per step ~ d0 + d1*k, both >= 0."""
        points = observations(self.costs.draft_steps)
        fit = fit_rising(points)
        if fit is None or fit[0] < 0:  # no fixed part identifiable: all of it per token
            return 0.0, self.costs.draft_time.mean(0.0)
        return fit

