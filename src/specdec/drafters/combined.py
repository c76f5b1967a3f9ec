"""Prompt lookup when its match promises more than the model drafter, else the model drafter.

Copying from the context costs nothing and is often right for long spans (code edits, quotes,
summaries); a model drafter covers the rest but costs time per draft. Each step this drafter
asks the lookup first and takes its proposal only when the expected rate (tokens per second)
beats the model's:

    (1 + E_lookup[m]) / V  >=  (1 + E_model) / (V + D)

E_lookup[m]: mean accepted tokens of lookup proposals whose suffix match had length m;
E_model: mean accepted tokens per model step; D: the model drafter's time per step; V: the
rest of a step (verification). All are learned online from what the decoder appends to the
context: the tokens emitted after a proposal tell how many of its drafts were accepted. The
lookup is scored on every step it had a proposal, used or not: emitted tokens are distributed
as the target's p, so agreement with them is an unbiased estimate of the one-hot acceptance
probability p(x) (a lower bound when all emitted tokens agree). Each proposal keeps its own
drafter's q (None for the lookup), so verification stays exact whichever is chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from specdec.control.smoothing import Smoothed
from specdec.drafters.base import Drafter, Proposal
from specdec.sampling import SamplingParams, TokenHistory


@dataclass
class PolicyConfig:
    decay: float = 0.95  # per observation; ~20 observations of memory
    prior_lookup: float = 0.5  # accepted tokens of a lookup proposal before any evidence
    prior_model: float = 1.5  # accepted tokens of a model proposal before any evidence
    prior_draft_share: float = 0.3  # D / V before the model drafter was timed
    prior_weight: float = 1.0


@dataclass
class _Stats:
    """What the policy has learned, for one kind of decoding (greedy or sampled)."""

    config: PolicyConfig
    lookup: dict[int, Smoothed] = field(default_factory=dict)  # match length -> accepted
    model: Smoothed | None = None
    draft_s: Smoothed = field(default_factory=Smoothed)  # model drafter, per step
    verify_s: Smoothed = field(default_factory=Smoothed)  # the rest of a step

    def __post_init__(self) -> None:
        c = self.config
        self.model = Smoothed(c.prior_model * c.prior_weight, c.prior_weight)

    def lookup_mean(self, match: int) -> Smoothed:
        c = self.config
        return self.lookup.setdefault(match, Smoothed(c.prior_lookup * c.prior_weight,
                                                   c.prior_weight))

    @property
    def draft_share(self) -> float:
        """D / V: the model drafter's time per step over the rest of a step."""
        if self.draft_s.weight and self.verify_s.weight and self.verify_s.mean(0.0) > 0:
            return self.draft_s.mean(0.0) / self.verify_s.mean(0.0)
        return self.config.prior_draft_share

    def lookup_wins(self, match: int) -> bool:
        return (1 + self.lookup_mean(match).mean(0.0)) * (1 + self.draft_share) >= \
            1 + self.model.mean(0.0)


@dataclass
class _Pending:
    """The last step's proposal(s), scored when the next context arrives."""

    context_length: int
    started: float
    used_lookup: bool
    match: int  # lookup match length, 0 if the lookup had nothing
    lookup_tokens: list[int]
    model_tokens: list[int]
    draft_s: float


class CombinedDrafter(Drafter):
    def __init__(self, lookup: Drafter, fallback: Drafter, config: PolicyConfig | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.lookup = lookup
        self.clock = clock
        self.fallback = fallback
        self.name = f"{lookup.name}+{fallback.name}"
        self.config = config or PolicyConfig()
        self.stats = {True: _Stats(self.config), False: _Stats(self.config)}  # by greedy
        self.lookup_steps = 0  # steps served by the lookup, for reports
        self.fallback_steps = 0
        self._pending: _Pending | None = None

    def fork(self) -> CombinedDrafter:
        """A drafter for another concurrent sequence: both parts forked, its own policy."""
        return CombinedDrafter(self.lookup.fork(), self.fallback.fork(), self.config, self.clock)

    def warmup(self, capacity: int) -> float:
        return self.lookup.warmup(capacity) + self.fallback.warmup(capacity)

    def begin(self, prompt_ids: torch.Tensor) -> None:
        # what was learned carries over between requests; only the step in flight is dropped
        self.lookup.begin(prompt_ids)
        self.fallback.begin(prompt_ids)
        self.lookup_steps = self.fallback_steps = 0
        self._pending = None

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None) -> Proposal:
        extra = {} if history is None else {"history": history}
        now = self.clock()
        stats = self.stats[params.greedy]
        self._learn(context, now, stats)
        proposal = self.lookup.propose(context, gamma, params, generator, **extra)
        match = getattr(self.lookup, "last_match", 1) if proposal.length else 0
        lookup_tokens = proposal.tokens[0].tolist() if proposal.length else []
        use_lookup = proposal.length > 0 and stats.lookup_wins(match)
        draft_s = 0.0
        if use_lookup:
            self.lookup_steps += 1
        else:
            self.fallback_steps += 1
            start = self.clock()
            # the fallback re-syncs its cache with the whole context itself
            proposal = self.fallback.propose(context, gamma, params, generator, **extra)
            draft_s = self.clock() - start
        self._pending = _Pending(context.shape[1], now, use_lookup, match, lookup_tokens,
                                 [] if use_lookup else proposal.tokens[0].tolist(), draft_s)
        return proposal

    def _learn(self, context: torch.Tensor, now: float, stats: _Stats) -> None:
        """Score the previous step's proposals against the tokens the decoder appended."""
        last, self._pending = self._pending, None
        if last is None or context.shape[1] <= last.context_length:
            return  # first step, or not a continuation of the last one
        emitted = context[0, last.context_length:].tolist()
        decay = self.config.decay
        if last.match:
            stats.lookup_mean(last.match).add(_agreement(last.lookup_tokens, emitted), 1, decay)
        if not last.used_lookup and last.model_tokens:
            stats.model.add(_agreement(last.model_tokens, emitted), 1, decay)
            stats.draft_s.add(last.draft_s, 1, decay)
        stats.verify_s.add(max(now - last.started - last.draft_s, 0.0), 1, decay)


def _agreement(proposed: list[int], emitted: list[int]) -> int:
    """Leading proposed tokens equal to the emitted ones (= accepted for the proposal used)."""
    n = 0
    for a, b in zip(proposed, emitted, strict=False):
        if a != b:
            break
        n += 1
    return n
