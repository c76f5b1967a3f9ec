"""Gamma for a batch: one block width W for all rows, chosen for the batch's throughput.

With n rows and drafts up to W, one target forward processes n * (W + 1) tokens (blocks are
padded to a common width). Alone, a (k+1)-token verification costs nearly what one token
costs; in a batch the forward's time grows with the tokens it carries, so speculation pays
less as rows x (W + 1) grows. The controller fits the forward's time as a line in the tokens
it carries, T(m) = a + b * m, from the steps it observed (weighted least squares, recent steps
weigh more), and chooses
    W = argmax  sum_i E(alpha_i, min(W, want_i)) / (T(n (W + 1)) + d * sum_i min(W, want_i))
where E(alpha, k) = (1 - alpha^(k+1)) / (1 - alpha) is the expected tokens of a step (the
paper's Eq. 1), alpha_i each row's measured acceptance and d the drafter's time per drafted
token. Each row's alpha is its own measured acceptance shrunk toward the batch's (pooled over
rows, recent steps weigh more), so a row that just joined starts from what the batch sees,
not from an optimistic prior. W = 0 switches speculation off; it comes back by itself when the
batch shrinks (fewer tokens per forward), and a short probe now and then (backing off while
probes fail) notices acceptance that has risen. While only one token count has been observed
it alternates W between 0 and its initial value to measure the slope.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.control.probe import ProbeBackoff
from specdec.control.smoothing import Acceptance, Smoothed, fit_rising, means, observations
from specdec.theory import expected_tokens


@dataclass
class BatchGammaConfig:
    max_gamma: int = 16
    initial_gamma: int = 4
    decay: float = 0.95  # per observation of the same token count
    draft_decay: float = 0.9
    alpha_decay: float = 0.95  # per step, for the batch's pooled acceptance
    prior_alpha: float = 0.6
    prior_weight: float = 2.0  # pseudo-positions behind the prior
    row_weight: float = 8.0  # positions of the batch's alpha behind a row's own
    probe_gamma: int = 2
    probe_every: int = 16  # plain steps before a probe; doubles after each failed one
    max_probe_every: int = 128
    min_seconds: float = 1.0  # of measured steps per side before comparing them


@dataclass
class BatchGammaController:
    """Chooses the batch's block width from a fitted forward-time line and rows' alphas."""

    config: BatchGammaConfig = field(default_factory=BatchGammaConfig)

    def __post_init__(self) -> None:
        self.forward_time: dict[int, Smoothed] = {}  # tokens carried -> seconds per forward
        self.draft_time = Smoothed()  # drafter seconds per drafted token
        cfg = self.config
        self.acceptance = Acceptance(cfg.prior_alpha, cfg.prior_weight)
        self.last_width = cfg.initial_gamma
        self.backoff = ProbeBackoff(cfg.probe_every, cfg.max_probe_every)
        # (rows, speculated) -> decayed tokens / decayed seconds of whole steps
        self.outcomes: dict[tuple[int, bool], Smoothed] = {}
        self.arm_steps = 0
        self.retry_every = cfg.probe_every

    @property
    def alpha(self) -> float:
        """The batch's acceptance: mean beta over recent drafted positions of all rows."""
        return self.acceptance.value

    def row_alpha(self, beta_sum: float, beta_count: int) -> float:
        """A row's acceptance from its own betas, shrunk toward the batch's alpha."""
        weight = self.config.row_weight
        return min((beta_sum + self.alpha * weight) / (beta_count + weight), 0.999)

    def choose(self, alphas: list[float], wanted: list[int]) -> int:
        """The drafts per row (the block width minus one) for rows with these alphas, each
        wanting at most wanted[i] drafts."""
        top = min(max(wanted, default=0), self.config.max_gamma)
        if top <= 0:
            return 0
        if len(self.forward_time) < 2:  # one token count seen: measure another
            width = 0 if self.last_width > 0 and self.forward_time else \
                min(self.config.initial_gamma, top)
        else:
            width = self.model_width(alphas, wanted)
        if width > 0 and not self._speculation_wins(len(wanted)):
            width = 0
        if self.backoff.probe(width):  # a short draft now and then: acceptance may have risen
            width = min(self.config.probe_gamma, top)
        self.last_width = width
        return width

    def model_width(self, alphas: list[float], wanted: list[int]) -> int:
        """The width that maximizes the modelled rate (before the measured check)."""
        top = min(max(wanted, default=0), self.config.max_gamma)
        return max(range(top + 1), key=lambda w: self.rate(alphas, wanted, w))

    def observe_step(self, rows: int, speculated: bool, tokens: int, seconds: float) -> None:
        """A whole step (drafting, forward, verification) of `rows` rows emitted `tokens`
        in `seconds`: the measured outcome the model's choice is checked against."""
        key = (rows, speculated)
        self.outcomes.setdefault(key, Smoothed()).add(tokens, seconds, self.config.decay)
        self.arm_steps += 1

    def _speculation_wins(self, rows: int) -> bool:
        """Whether speculating beat plain steps at this batch size, in tokens per second
        measured over whole steps. The model above misses costs outside the forward and the
        forward's non-linear cost; this check keeps speculation from losing to plain
        decoding. Each side is measured for at least `min_seconds`; the losing side is
        retried now and then, less often while it keeps losing."""
        cfg = self.config
        spec, plain = self.outcomes.get((rows, True)), self.outcomes.get((rows, False))
        for side, count in ((False, plain), (True, spec)):
            if count is None or count.weight < cfg.min_seconds:
                return side  # measure the side not yet measured
        assert spec is not None and plain is not None
        wins = spec.total / spec.weight > plain.total / plain.weight
        if self.arm_steps >= self.retry_every:  # the loser again, once
            self.arm_steps = 0
            self.retry_every = min(2 * self.retry_every, cfg.max_probe_every)
            return not wins
        return wins

    def observe(self, tokens: int, forward_s: float, drafted: int, drafter_s: float,
                beta_sum: float = 0.0, beta_count: int = 0) -> None:
        """One step: the forward carried `tokens` (padding included) in forward_s seconds;
        the drafters proposed `drafted` tokens in drafter_s seconds altogether; the rows'
        betas at their examined draft positions sum to beta_sum over beta_count positions."""
        self.forward_time.setdefault(tokens, Smoothed()).add(forward_s, 1, self.config.decay)
        if drafted:
            self.draft_time.add(drafter_s, drafted, self.config.draft_decay)
        if beta_count:
            self.acceptance.add(beta_sum, beta_count, self.config.alpha_decay)

    def rate(self, alphas: list[float], wanted: list[int], width: int) -> float:
        """Expected tokens per second of the batch at this width."""
        drafts = [min(width, w) for w in wanted]
        tokens = sum(expected_tokens(a, k) for a, k in zip(alphas, drafts, strict=True))
        seconds = self.forward_seconds(len(wanted) * (width + 1)) + \
            self.draft_time.mean(0.0) * sum(drafts)
        return tokens / max(seconds, 1e-12)

    def forward_seconds(self, tokens: int) -> float:
        """The fitted T(tokens); a flat line before two token counts are known."""
        points = observations(self.forward_time)
        if not points:
            return 1.0
        fit = fit_rising(points)
        if fit is None:
            return means(points)[1]
        return max(fit[0] + fit[1] * tokens, 1e-9)
