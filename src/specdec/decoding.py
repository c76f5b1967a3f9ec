"""The speculative decoding loop (Algorithm 1) over the LanguageModel and Drafter protocols.

One target forward per step verifies every draft. The target's cache holds the context minus
its last (pending) token; after verification it is cropped back to the accepted prefix.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from specdec.controller import FixedGamma, GammaPolicy, StepRecord
from specdec.drafters.base import Drafter, Proposal
from specdec.drafters.model import ModelDrafter
from specdec.models.base import LanguageModel, check_same_vocabulary
from specdec.models.device import StepClock
from specdec.noise import position_range, resolve_seed
from specdec.sampling import (
    SamplingParams,
    TokenHistory,
    TokenLogprob,
    adjusted_probs,
    make_generator,
    penalize,
    token_logprobs,
)
from specdec.stats import GenerationStats
from specdec.verify import Verdict, overlap, verify, verify_coupled, verify_greedy

# cache positions a step may write past the output: the pending token, up to 64 drafts and
# the padding of a compiled width (a hint; runners grow when it is exceeded)
DRAFT_RESERVE = 80


@dataclass
class StepEvent:
    """One target call: what a UI needs to draw the paper's Figure 1."""

    accepted: list[int]  # draft tokens kept
    rejected: list[int]  # draft tokens thrown away
    next_token: int | None  # correction (after a rejection) or bonus (all accepted); None if cut
    bonus: bool  # True when every draft was accepted and next_token came from p_{k+1}
    finished: bool = False
    finish_reason: str | None = None  # "stop" or "length" once finished
    stats: GenerationStats = field(default_factory=GenerationStats)
    logprobs: list[TokenLogprob] | None = None  # per emitted token, when params.logprobs

    @property
    def tokens(self) -> list[int]:
        """Tokens this step appends to the output."""
        return self.accepted + ([] if self.next_token is None else [self.next_token])


@dataclass
class GenerationResult:
    tokens: list[int]
    text: str
    stats: GenerationStats
    finish_reason: str


class SpeculativeDecoder:
    """Exact speculative decoding: `target` verifies what `drafter` proposes, gamma at a time.

    drafter may be a LanguageModel with the target's vocabulary, any Drafter, or None for
    plain autoregressive decoding through the same code. gamma 0 also means plain decoding.
    gamma may instead be a zero-argument factory of GammaPolicy, called once per generation.
    """

    def __init__(self, target: LanguageModel, drafter: LanguageModel | Drafter | None = None,
                 gamma: int | Callable[[], GammaPolicy] = 4):
        if not callable(gamma) and (
                isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 0):
            raise ValueError(f"gamma must be an integer >= 0, got {gamma!r}")
        if drafter is target:
            raise ValueError("drafter and target are the same object and would share one KV "
                             "cache; wrap the model a second time to draft with it")
        if drafter is not None and not isinstance(drafter, Drafter):
            check_same_vocabulary(target, drafter)
            drafter = ModelDrafter(drafter, target.vocab_size)
        self.target = target
        self.drafter = drafter
        self.gamma = gamma
        self.tokenizer = getattr(target, "tokenizer", None)

    def generate(self, prompt: str | list[int] | torch.Tensor,
                 params: SamplingParams | None = None) -> GenerationResult:
        """Run to completion; return the new tokens, their text and the stats."""
        tokens: list[int] = []
        event = None
        for event in self.stream(prompt, params):
            tokens.extend(event.tokens)
        assert event is not None and event.finish_reason is not None
        return GenerationResult(tokens, self.decode(tokens), event.stats, event.finish_reason)

    def stream(self, prompt: str | list[int] | torch.Tensor,
               params: SamplingParams | None = None) -> Iterator[StepEvent]:
        """Yield one StepEvent per target call until a stop token or max_new_tokens."""
        # the coupled rule without a seed still needs one noise for drafter and target
        params = resolve_seed(params or SamplingParams())
        prompt_ids = self.encode(prompt)
        self._check_length(prompt_ids, params)
        params.check_vocabulary(self.target.vocab_size)
        clock = StepClock(self.target.device)
        generator = make_generator(params.seed, self.target.device)
        stop_ids = set(params.stop_token_ids) | self.eos_token_ids(params)
        stats = GenerationStats(prompt_tokens=prompt_ids.shape[1])
        policy = FixedGamma(self.gamma) if isinstance(self.gamma, int) else self.gamma()
        start = time.perf_counter()

        with torch.inference_mode():
            t0 = clock.mark()
            reserve = params.max_new_tokens + DRAFT_RESERVE
            context = self.target.prefill(prompt_ids, reserve=reserve)
            t1 = clock.mark()
            if self.drafter is not None:
                self.drafter.begin(prompt_ids)
            t2 = clock.mark()
            stats.target_s += clock.seconds(t0, t1)
            stats.drafter_s += clock.seconds(t1, t2)
            stats.prefill_s = clock.seconds(t0, t2)  # device time: a GPU prefill is queued
            # penalties: tokens seen so far and output counts, on the target's device; the
            # output begins after the context prefill returns
            history = TokenHistory.of(context.to(self.target.device), context.shape[1],
                                      self.target.vocab_size) if params.penalized else None
            while True:
                remaining = params.max_new_tokens - stats.generated
                # a step emits up to k + 1 tokens: never draft past max_new_tokens
                proposal, draft_clock = self._propose(context, min(policy.choose(), remaining - 1),
                                                      params, generator, clock, stats, history)
                # the context's last token is pending: not yet in the target's cache
                event, betas, target_s = self._verify_step(context[:, -1:], proposal, params,
                                                           generator, clock, stats, history,
                                                           position=context.shape[1])
                drafter_s = clock.seconds(*draft_clock)  # read after the step's one sync
                stats.drafter_s += drafter_s
                policy.observe(StepRecord(
                    drafted=proposal.length, accepted=len(event.accepted), betas=betas,
                    drafter_s=drafter_s, drafter_forwards=proposal.forwards, target_s=target_s))
                emitted = event.tokens
                cut = _cut(emitted, stop_ids, remaining)
                if cut is not None:
                    emitted = emitted[:cut]
                    event.accepted = event.accepted[:cut]
                    event.next_token = emitted[-1] if len(emitted) > len(event.accepted) else None
                    if event.logprobs is not None:
                        event.logprobs = event.logprobs[:cut]
                stats.generated += len(emitted)
                context = torch.cat([context, torch.tensor([emitted], dtype=torch.long)], dim=1)
                if history is not None:
                    history = history.plus(context[:, -len(emitted):].to(self.target.device))
                if cut is not None or stats.generated >= params.max_new_tokens:
                    event.finished = True
                    stopped = bool(emitted) and emitted[-1] in stop_ids
                    event.finish_reason = "stop" if stopped else "length"
                stats.total_s = time.perf_counter() - start
                stats.first_token_s = stats.first_token_s or stats.total_s
                event.stats = stats
                yield event
                if event.finished:
                    return

    def _propose(self, context: torch.Tensor, k: int, params: SamplingParams,
                 generator: torch.Generator, clock: StepClock, stats: GenerationStats,
                 history: TokenHistory | None = None) -> tuple[Proposal, tuple[Any, Any]]:
        """The drafter's proposal (at most k tokens) and the clock marks around it."""
        t0 = clock.mark()
        if self.drafter is None or k <= 0:
            return Proposal.empty(context.shape[0]), (t0, t0)
        # the history only when penalties need it: drafters written without it still work
        extra = {} if history is None else {"history": history}
        try:
            proposal = self.drafter.propose(context, k, params, generator, **extra)
        except Exception as error:  # a broken drafter costs speed, never correctness
            warnings.warn(f"drafter {self.drafter.name!r} failed ({error!r}); "
                          "decoding this step without drafts", RuntimeWarning, stacklevel=2)
            stats.drafter_failures += 1
            proposal = Proposal.empty(context.shape[0])
        marks = (t0, clock.mark())
        stats.drafter_calls += proposal.forwards
        if proposal.length > k:
            proposal = Proposal(proposal.tokens[:, :k],
                                None if proposal.probs is None else proposal.probs[:, :k],
                                proposal.forwards)
        return proposal, marks

    def _verify_step(self, pending: torch.Tensor, proposal: Proposal, params: SamplingParams,
                     generator: torch.Generator, clock: StepClock, stats: GenerationStats,
                     history: TokenHistory | None = None, *, position: int,
                     ) -> tuple[StepEvent, list[float], float]:
        """Verify the proposal in one target forward; position: the absolute position of the
        first token this step emits (the coupled rule's noise is keyed by it)."""
        device = self.target.device
        drafts = proposal.tokens.to(device, non_blocking=True)  # moved once
        k = drafts.shape[1]
        t0 = clock.mark()
        logits = self.target.extend(torch.cat([pending.to(device), drafts], dim=1))  # p_1..p_{k+1}
        t1 = clock.mark()
        raw = logits
        if history is not None:  # position i sees the history plus drafts x_1..x_{i-1}
            logits = penalize(logits, params, history, drafts)
        if params.greedy:
            verdict = verify_greedy(drafts, logits)
            betas = None  # one-hot p and q: beta is 1 where the draft matched, derived below
        else:
            draft_probs = None if proposal.probs is None else proposal.probs.to(device)
            target_probs = adjusted_probs(logits, params)
            if params.coupled_rule:
                verdict = verify_coupled(drafts, target_probs, params.seed,
                                         position_range(position, k + 1, device))
                # p(x) is still the acceptance chance of a deterministic draft; with a q it is
                # P(both Gumbel-max tokens agree), not 1 - TV: count what happened, as greedy
                betas = None if draft_probs is not None else overlap(target_probs, None, drafts)[0]
            else:
                verdict = verify(drafts, draft_probs, target_probs, generator)
                betas = overlap(target_probs, draft_probs, drafts)[0]
        # the step's one host synchronization: count, next token, drafts and betas together
        n, next_token, draft_list, beta_list = _to_host(verdict, drafts, betas)
        if betas is None:
            beta_list = [1.0] * n + [0.0] * (k - n)
        self.target.rollback(k - n)  # drop x_{n+1}..x_k; x_1..x_n stay cached
        target_s = clock.seconds(t0, t1)  # the forward; the verification math is loop time
        stats.target_s += target_s
        kept_betas = beta_list[: min(n + 1, k)]
        stats.record_step(k, n, kept_betas)
        event = StepEvent(accepted=draft_list[:n], rejected=draft_list[n:],
                          next_token=next_token, bonus=n == k)
        if params.logprobs is not None:  # the verify forward's logits: no extra forward
            event.logprobs = token_logprobs(raw[0, : n + 1], event.tokens, params.logprobs)
        return event, kept_betas, target_s

    # --- text, limits ---------------------------------------------------------------------

    def encode(self, prompt: str | list[int] | torch.Tensor) -> torch.Tensor:
        """Prompt as token ids [1, T]; strings need the target's tokenizer."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            if self.tokenizer is None:
                raise ValueError("prompt is text but the target has no tokenizer; pass token ids")
            prompt = self.tokenizer(prompt).input_ids
        ids = torch.as_tensor(prompt, dtype=torch.long)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError("prompt is empty" if ids.numel() == 0 else "prompt must be 1-D ids")
        if ids.shape[0] != 1:
            raise NotImplementedError("batched prompts are not supported yet (batch 1 only)")
        if ids.min() < 0 or ids.max() >= self.target.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.target.vocab_size})")
        return ids

    def decode(self, tokens: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _check_length(self, prompt_ids: torch.Tensor, params: SamplingParams) -> None:
        window = self.target.max_length
        if window is not None and prompt_ids.shape[1] + params.max_new_tokens > window:
            raise ValueError(
                f"max_new_tokens={params.max_new_tokens} plus the prompt's "
                f"{prompt_ids.shape[1]} tokens exceeds the model's context of {window} tokens")

    def eos_token_ids(self, params: SamplingParams) -> set[int]:
        """The model's end-of-sequence ids that stop generation (none when ignore_eos)."""
        return set() if params.ignore_eos else set(self.target.eos_token_ids)


def _to_host(verdict: Verdict, drafts: torch.Tensor, betas: torch.Tensor | None,
             ) -> tuple[int, int, list[int], list[float]]:
    """Row 0's accepted count, next token, drafts and betas in ONE device-to-host copy.

    Token ids are exact in float64 (< 2**53), so one float64 tensor carries them all.
    """
    k = drafts.shape[1]
    parts = [verdict.accepted[:1].double(), verdict.next_token[:1].double(), drafts[0].double()]
    if betas is not None:
        parts.append(betas.double())
    values = torch.cat(parts).tolist()
    drafted = [int(v) for v in values[2:2 + k]]
    return int(values[0]), int(values[1]), drafted, values[2 + k:]


def _cut(tokens: list[int], stop_ids: set[int], remaining: int) -> int | None:
    """Length to keep: through the first stop token, at most `remaining`; None if all stay."""
    for i, token in enumerate(tokens[:remaining]):
        if token in stop_ids:
            return i + 1
    return remaining if len(tokens) > remaining else None
