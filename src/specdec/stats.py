"""Per-generation counters and timings (the paper's measured quantities)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationStats:
    """Counts and times of one generation. Derived rates are properties.

    alpha is the mean of beta = sum_x min(p(x), q(x)) over drafted positions whose prefix
    is part of the output (positions up to and including the first rejection). Where that is
    not the acceptance chance (greedy, and the coupled rule with a model drafter's q), beta is
    what happened: 1 for an accepted draft, 0 for the rejected one.
    """

    target_calls: int = 0
    drafter_calls: int = 0  # drafter model forwards
    drafted: int = 0
    accepted: int = 0
    generated: int = 0  # tokens emitted (after truncation at stop / max_new_tokens)
    prompt_tokens: int = 0
    drafter_failures: int = 0
    tree_steps: int = 0  # steps that verified a branching tree (drafted counts its nodes)
    # emitted tokens a constraint forced (its mask allowed that token only): known before
    # the target ran, drafted for free where the request speculates
    forced_tokens: int = 0
    beta_sum: float = 0.0
    beta_count: int = 0
    drafted_at: list[int] = field(default_factory=list)  # per draft position i (0-based)
    accepted_at: list[int] = field(default_factory=list)
    drafter_s: float = 0.0
    grammar_s: float = 0.0  # host time a constraint's masks and matcher took (in other_s)
    target_s: float = 0.0
    prefill_s: float = 0.0  # target prefill + drafter set-up, before the first step
    first_token_s: float = 0.0  # from the start to the first emitted token(s)
    total_s: float = 0.0

    def record_step(self, drafted: int, accepted: int, betas: list[float]) -> None:
        self.target_calls += 1
        self.drafted += drafted
        self.accepted += accepted
        self.beta_sum += sum(betas)
        self.beta_count += len(betas)
        missing = drafted - len(self.drafted_at)
        if missing > 0:
            self.drafted_at.extend([0] * missing)
            self.accepted_at.extend([0] * missing)
        for i in range(drafted):
            self.drafted_at[i] += 1
            self.accepted_at[i] += int(i < accepted)

    def record_tree_step(self, nodes: int, depth: int, accepted: int,
                         betas: list[float]) -> None:
        """A tree of `nodes` drafts, `depth` deep, `accepted` of them on the kept path;
        per-position counts are per depth."""
        self.record_step(depth, accepted, betas)
        self.drafted += nodes - depth
        self.tree_steps += 1

    @property
    def nodes_per_call(self) -> float:
        """Draft tokens (line positions or tree nodes) verified per target call."""
        return self.drafted / self.target_calls if self.target_calls else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted drafts (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def alpha(self) -> float:
        """Mean sum_x min(p, q): the paper's alpha estimated on this generation."""
        return self.beta_sum / self.beta_count if self.beta_count else 0.0

    @property
    def tokens_per_call(self) -> float:
        return self.generated / self.target_calls if self.target_calls else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at, strict=True)]

    @property
    def other_s(self) -> float:
        return max(0.0, self.total_s - self.drafter_s - self.target_s)

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.total_s if self.total_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first over the time after the first: 1 / (time per output token),
        as vLLM defines it ((end - first token) / (n - 1)). 0 with fewer than 2 tokens."""
        decode_s = self.total_s - self.first_token_s
        return (self.generated - 1) / decode_s if self.generated > 1 and decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        """Counts, derived rates and times, JSON-ready."""
        out = asdict(self)
        for name in ("acceptance_rate", "alpha", "tokens_per_call", "nodes_per_call",
                     "acceptance_by_position",
                     "other_s", "tokens_per_s", "decode_tokens_per_s"):
            out[name] = getattr(self, name)
        return out
