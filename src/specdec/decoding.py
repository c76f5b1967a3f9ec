"""The speculative decoding loop (Algorithm 1) over the LanguageModel and Drafter protocols.

One target forward per step verifies every draft. The target's cache holds the context minus
its last (pending) token; after verification it is cropped back to the accepted prefix.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from specdec.controller import FixedGamma, GammaPolicy, StepRecord
from specdec.drafters.base import Drafter, Proposal
from specdec.drafters.model import ModelDrafter
from specdec.models.base import LanguageModel, check_same_vocabulary
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
from specdec.verify import overlap, verify, verify_greedy


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
            drafter = ModelDrafter(drafter)
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
        params = params or SamplingParams()
        prompt_ids = self.encode(prompt)
        self._check_length(prompt_ids, params)
        params.check_vocabulary(self.target.vocab_size)
        generator = make_generator(params.seed)
        stop_ids = set(params.stop_token_ids) | self.eos_token_ids(params)
        stats = GenerationStats(prompt_tokens=prompt_ids.shape[1])
        policy = FixedGamma(self.gamma) if isinstance(self.gamma, int) else self.gamma()
        start = time.perf_counter()

        with torch.inference_mode():
            t0 = time.perf_counter()
            context = self.target.prefill(prompt_ids)
            stats.target_s += time.perf_counter() - t0
            if self.drafter is not None:
                t0 = time.perf_counter()
                self.drafter.begin(prompt_ids)
                stats.drafter_s += time.perf_counter() - t0
            stats.prefill_s = time.perf_counter() - start
            output_start = context.shape[1]  # penalties count the output from here
            while True:
                history = TokenHistory.of(context, output_start, self.target.vocab_size) \
                    if params.penalized else None
                remaining = params.max_new_tokens - stats.generated
                # a step emits up to k + 1 tokens: never draft past max_new_tokens
                before = (stats.drafter_s, stats.drafter_calls, stats.target_s)
                proposal = self._propose(context, min(policy.choose(), remaining - 1), params,
                                         generator, stats, history)
                # the context's last token is pending: not yet in the target's cache
                event, betas = self._verify_step(context[:, -1:], proposal, params, generator,
                                                 stats, history)
                policy.observe(StepRecord(
                    drafted=proposal.length, accepted=len(event.accepted), betas=betas,
                    drafter_s=stats.drafter_s - before[0],
                    drafter_forwards=stats.drafter_calls - before[1],
                    target_s=stats.target_s - before[2]))
                emitted = event.tokens
                cut = _cut(emitted, stop_ids, remaining)
                if cut is not None:
                    emitted = emitted[:cut]
                    event.accepted = event.accepted[:cut]
                    event.next_token = emitted[-1] if len(emitted) > len(event.accepted) else None
                    if event.logprobs is not None:
                        event.logprobs = event.logprobs[:cut]
                stats.generated += len(emitted)
                context = torch.cat([context, torch.tensor([emitted])], dim=1)
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
                 generator: torch.Generator, stats: GenerationStats,
                 history: TokenHistory | None = None) -> Proposal:
        if self.drafter is None or k <= 0:
            return Proposal.empty(context.shape[0])
        t0 = time.perf_counter()
        # the history only when penalties need it: drafters written without it still work
        extra = {} if history is None else {"history": history}
        try:
            proposal = self.drafter.propose(context, k, params, generator, **extra)
        except Exception as error:  # a broken drafter costs speed, never correctness
            warnings.warn(f"drafter {self.drafter.name!r} failed ({error!r}); "
                          "decoding this step without drafts", RuntimeWarning, stacklevel=2)
            stats.drafter_failures += 1
            proposal = Proposal.empty(context.shape[0])
        stats.drafter_s += time.perf_counter() - t0
        stats.drafter_calls += proposal.forwards
        if proposal.length > k:
            proposal = Proposal(proposal.tokens[:, :k],
                                None if proposal.probs is None else proposal.probs[:, :k],
                                proposal.forwards)
        return proposal

    def _verify_step(self, pending: torch.Tensor, proposal: Proposal, params: SamplingParams,
                     generator: torch.Generator, stats: GenerationStats,
                     history: TokenHistory | None = None) -> tuple[StepEvent, list[float]]:
        drafts = proposal.tokens
        k = drafts.shape[1]
        t0 = time.perf_counter()
        raw = logits = self.target.extend(torch.cat([pending, drafts], dim=1))  # p_1..p_{k+1}
        stats.target_s += time.perf_counter() - t0
        if history is not None:  # position i sees the history plus drafts x_1..x_{i-1}
            logits = penalize(logits, params, history, drafts)
        if params.greedy:
            verdict = verify_greedy(drafts, logits)
            betas = (verdict.accepted[0] > torch.arange(k)).float()  # one-hot p, q: beta = match
        else:
            target_probs = adjusted_probs(logits, params)
            verdict = verify(drafts, proposal.probs, target_probs, generator)
            betas = overlap(target_probs, proposal.probs, drafts)[0]
        n = int(verdict.accepted[0])
        t0 = time.perf_counter()
        self.target.rollback(k - n)  # drop x_{n+1}..x_k; x_1..x_n stay cached
        stats.target_s += time.perf_counter() - t0
        kept_betas = betas[: min(n + 1, k)].tolist()
        stats.record_step(k, n, kept_betas)
        event = StepEvent(accepted=drafts[0, :n].tolist(), rejected=drafts[0, n:].tolist(),
                          next_token=int(verdict.next_token[0]), bonus=n == k)
        if params.logprobs is not None:  # the verify forward's logits: no extra forward
            event.logprobs = token_logprobs(raw[0, : n + 1], event.tokens, params.logprobs)
        return event, kept_betas

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
        if params.ignore_eos:
            return set()
        config = getattr(getattr(self.target, "model", None), "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


def _cut(tokens: list[int], stop_ids: set[int], remaining: int) -> int | None:
    """Length to keep: through the first stop token, at most `remaining`; None if all stay."""
    for i, token in enumerate(tokens[:remaining]):
        if token in stop_ids:
            return i + 1
    return remaining if len(tokens) > remaining else None
