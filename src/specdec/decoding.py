"""SpeculativeDecoder: the library's entry point (generate, stream, generate_batch).

Every path runs the step loop of batch.py: `stream` is a batch of one row on the target's own
cache (any runner, compiled steps included), `generate_batch` puts up to max_batch_size
sequences in each target forward on the static runner, prompts joining as others finish.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from specdec.batch import DRAFT_RESERVE, BatchDecoder, RowFailure, forks
from specdec.control.policy import GammaPolicy
from specdec.drafters.base import Drafter
from specdec.drafters.model import ModelDrafter
from specdec.errors import InvalidParameter, UsageError
from specdec.grammar import GrammarCompiler
from specdec.language_model import LanguageModel, check_same_vocabulary
from specdec.runtime.rows import Rows, SingleRow, make_rows
from specdec.runtime.static import StaticCausalLM
from specdec.sampling import SamplingParams
from specdec.sequence import StepEvent
from specdec.stats import GenerationStats

__all__ = ["DRAFT_RESERVE", "GenerationResult", "SpeculativeDecoder", "StepEvent"]


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
        # constraints compile against the target's tokenizer (built on the first one)
        self.grammars = None if self.tokenizer is None else \
            GrammarCompiler(self.tokenizer, target.vocab_size)

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
        """Yield one StepEvent per target call until a stop token or max_new_tokens.

        A tree drafter (`--draft suffix`) on a target that verifies trees gets a tree per
        step (step.py, one row); elsewhere drafts are lines."""
        params = params or SamplingParams()
        prompt_ids = self.encode(prompt)
        self.check(prompt_ids, params)
        loop = self.batch(SingleRow(self.target))
        with torch.inference_mode():
            loop.add(prompt_ids, params)
            while loop.sequences:
                for _, event in loop.step():
                    yield _row_event(event)

    def generate_batch(self, prompts: list[str | list[int] | torch.Tensor],
                       params: SamplingParams | list[SamplingParams] | None = None,
                       max_batch_size: int = 16) -> list[GenerationResult]:
        """Generate for every prompt, up to max_batch_size in each target forward.

        params: one SamplingParams for all prompts, or one per prompt (temperature, top-k/p,
        min-p, seed, max_new_tokens, stop ids...). Prompts wait in order and join as rows
        finish. A row's output depends on its seed, not on the batch it ran in (for a fixed
        gamma). Targets the static runner cannot run decode one prompt at a time.
        """
        if isinstance(params, list):
            if len(params) != len(prompts):
                raise ValueError(f"{len(params)} params for {len(prompts)} prompts")
            per_row = params
        else:
            per_row = [params or SamplingParams()] * len(prompts)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        encoded = [self.encode(p) for p in prompts]
        for ids, p in zip(encoded, per_row, strict=True):
            self.check(ids, p)
        size = min(max_batch_size, max(len(prompts), 1))
        rows = make_rows(self.target, size) if self.batches() else SingleRow(self.target)
        loop = self.batch(rows)
        waiting = deque(range(len(prompts)))
        index_of: dict[int, int] = {}
        tokens: list[list[int]] = [[] for _ in prompts]
        results: list[GenerationResult | None] = [None] * len(prompts)
        with torch.inference_mode():
            while waiting or loop.sequences:
                joining = [waiting.popleft()
                           for _ in range(min(len(waiting), rows.max_rows - rows.count))]
                added = loop.add_many([(encoded[i], per_row[i]) for i in joining])
                index_of.update((id(s), i) for s, i in zip(added, joining, strict=True))
                for sequence, outcome in loop.step():
                    event = _row_event(outcome)
                    i = index_of[id(sequence)]
                    tokens[i].extend(event.tokens)
                    if event.finished:
                        assert event.finish_reason is not None
                        results[i] = GenerationResult(tokens[i], self.decode(tokens[i]),
                                                      event.stats, event.finish_reason)
        return [r for r in results if r is not None]

    def batch(self, rows: Rows) -> BatchDecoder:
        """The step loop over `rows` with this decoder's drafter and gamma."""
        return BatchDecoder(rows, self.drafter, self.gamma, self.target.eos_token_ids,
                            self.target.vocab_size, grammars=self.grammars)

    def batches(self) -> bool:
        """Whether several sequences can share target forwards (static runner, and a
        drafter that can fork)."""
        return isinstance(self.target, StaticCausalLM) and forks(self.drafter)

    def check(self, prompt_ids: torch.Tensor, params: SamplingParams) -> None:
        """Refuse a request the model cannot serve: too long, ids out of the vocabulary, a
        constraint that does not compile (InvalidParameter naming its field)."""
        self._check_length(prompt_ids, params)
        params.check_vocabulary(self.target.vocab_size)
        self.check_constraint(params)

    def check_constraint(self, params: SamplingParams) -> None:
        """InvalidParameter when params.constraint cannot be compiled for the target."""
        if params.constraint is None:
            return
        if self.grammars is None:
            raise InvalidParameter(params.constraint.name, "a constraint needs the target's "
                                   "tokenizer, and this target has none")
        self.grammars.compile(params.constraint)

    # --- text, limits ---------------------------------------------------------------------

    def encode(self, prompt: str | list[int] | torch.Tensor) -> torch.Tensor:
        """Prompt as token ids [1, T]; strings need the target's tokenizer."""
        if isinstance(prompt, str):
            if not prompt:
                raise UsageError("prompt is empty")
            if self.tokenizer is None:
                raise ValueError("prompt is text but the target has no tokenizer; pass token ids")
            prompt = self.tokenizer(prompt).input_ids
        elif isinstance(prompt, list):  # checked before int64 can overflow
            flat = prompt if not prompt or not isinstance(prompt[0], list) else \
                [token for row in prompt for token in row]
            _check_ids(flat, self.target.vocab_size)
        ids = torch.as_tensor(prompt, dtype=torch.long)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise UsageError("prompt is empty" if ids.numel() == 0 else "prompt must be 1-D ids")
        if ids.shape[0] != 1:
            raise NotImplementedError("batched prompts are not supported yet (batch 1 only)")
        if ids.min() < 0 or ids.max() >= self.target.vocab_size:
            _check_ids(ids.flatten().tolist(), self.target.vocab_size)
        return ids

    def decode(self, tokens: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _check_length(self, prompt_ids: torch.Tensor, params: SamplingParams) -> None:
        window = self.target.max_length
        if window is not None and prompt_ids.shape[1] + params.max_new_tokens > window:
            raise UsageError(
                f"max_new_tokens={params.max_new_tokens} plus the prompt's "
                f"{prompt_ids.shape[1]} tokens exceeds the model's context of {window} tokens")


def _row_event(outcome: StepEvent | RowFailure) -> StepEvent:
    """A row's step event; its own error raised here, for a library caller."""
    if isinstance(outcome, RowFailure):
        raise outcome.error
    return outcome


def _check_ids(ids: list, vocab_size: int) -> None:
    """UsageError naming the first prompt id that is not a token of the vocabulary."""
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            shown = repr(token) if len(repr(token)) <= 40 else repr(token)[:40] + "..."
            raise InvalidParameter("prompt", f"prompt token id {shown} is outside the "
                                   f"vocabulary [0, {vocab_size})")
