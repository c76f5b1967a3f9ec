"""The methods compared: each turns one prompt into tokens, wall time and (ours) stats.

Every method gets the same prompt token ids and SamplingParams; sampling is plain
temperature sampling (no top-k / top-p) so all methods sample the same distribution.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from specdec.decoding import SpeculativeDecoder
from specdec.drafters.base import Drafter
from specdec.language_model import LanguageModel
from specdec.runtime.device import synchronize
from specdec.sampling import SamplingParams
from specdec.stats import GenerationStats


@dataclass
class Outcome:
    tokens: list[int]
    seconds: float  # wall time of the whole generation, prefill included
    stats: GenerationStats | None = None  # specdec methods only
    prefill_s: float = 0.0  # of stats.target_s: the prompt's forward, not decoding
    drafter_begin_s: float = 0.0  # of stats.drafter_s: the drafter's own prefill


@dataclass
class Method:
    name: str
    family: str  # "specdec", "transformers" or "llama.cpp"
    run: Callable[[list[int], SamplingParams], Outcome]
    drafter: str | None = None  # None: plain decoding
    gamma: int | str | None = None  # fixed int, "auto", or None when plain / not ours
    notes: list[str] = field(default_factory=list)


PLAIN = "specdec plain"  # the baseline every speedup is measured against


def specdec_method(target: LanguageModel, drafter: Drafter | None, gamma: Any,
                   name: str, drafter_name: str | None = None,
                   gamma_label: int | str | None = None) -> Method:
    """Our decoder; drafter None is plain autoregressive decoding through the same code."""
    timed_target = _TimedPrefill(target)
    timed_drafter = None if drafter is None else _TimedBegin(drafter)
    decoder = SpeculativeDecoder(timed_target, timed_drafter,  # type: ignore[arg-type]
                                 gamma if drafter is not None else 0)

    def run(prompt: list[int], params: SamplingParams) -> Outcome:
        start = time.perf_counter()
        result = decoder.generate(prompt, params)
        return Outcome(result.tokens, time.perf_counter() - start, result.stats,
                       timed_target.last_s, 0.0 if timed_drafter is None else timed_drafter.last_s)

    return Method(name, "specdec", run, drafter_name, gamma_label if drafter else None)


class _TimedPrefill:
    """The target, timing its prefill so decode steps can be costed without it."""

    def __init__(self, model: LanguageModel):
        self._model = model
        self.last_s = 0.0

    def prefill(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        start = time.perf_counter()
        try:
            return self._model.prefill(prompt_ids, reserve=reserve)
        finally:
            synchronize(self._model.device)  # a GPU prefill is queued, not done, on return
            self.last_s = time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:  # extend, rollback, name, vocab_size, ...
        return getattr(self._model, name)


class _TimedBegin(Drafter):
    """A drafter, timing begin() (its own prefill) apart from its proposals."""

    def __init__(self, drafter: Drafter):
        self._drafter = drafter
        self.name = drafter.name
        self.last_s = 0.0

    def begin(self, prompt_ids: torch.Tensor) -> None:
        start = time.perf_counter()
        try:
            self._drafter.begin(prompt_ids)
        finally:
            self.last_s = time.perf_counter() - start

    def propose(self, *args: Any, **kwargs: Any) -> Any:
        return self._drafter.propose(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._drafter, name)


def hf_method(model: Any, name: str, eos_ids: set[int], drafter_name: str | None = None,
              **generate_kwargs: Any) -> Method:
    """transformers `generate` (plain, prompt lookup or assisted via generate_kwargs)."""

    def run(prompt: list[int], params: SamplingParams) -> Outcome:
        ids = torch.tensor([prompt], device=model.device)
        sampling = {"do_sample": False} if params.greedy else {
            "do_sample": True, "temperature": params.temperature, "top_k": 0, "top_p": 1.0}
        if params.seed is not None:
            torch.manual_seed(params.seed)
        eos = [] if params.ignore_eos else sorted(eos_ids)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=params.max_new_tokens,
                                 min_new_tokens=params.max_new_tokens if params.ignore_eos else 0,
                                 eos_token_id=eos or None, pad_token_id=_pad(model, eos_ids),
                                 repetition_penalty=1.0, **sampling, **generate_kwargs)
        synchronize(model.device)
        seconds = time.perf_counter() - start
        return Outcome(_cut_at_eos(out[0, ids.shape[1]:].tolist(), eos), seconds)

    return Method(name, "transformers", run, drafter_name)


def hf_methods(model: Any, eos_ids: set[int], drafters: dict[str, Any] | None = None,
               tokenizer: Any = None, lookup_tokens: int = 10) -> list[Method]:
    """transformers' plain generate, prompt lookup, and assisted generation per drafter model.

    drafters maps a name to (transformers model, its tokenizer); one whose vocabulary differs
    from `tokenizer`'s uses universal assisted generation (assistant_tokenizer).
    """
    methods = [hf_method(model, "transformers plain", eos_ids),
               hf_method(model, "transformers prompt lookup", eos_ids, "prompt lookup",
                         prompt_lookup_num_tokens=lookup_tokens)]
    for name, (assistant, assistant_tokenizer) in (drafters or {}).items():
        extra: dict[str, Any] = {"assistant_model": assistant}
        if assistant_tokenizer is not None and tokenizer is not None and \
                assistant_tokenizer.get_vocab() != tokenizer.get_vocab():
            extra.update(tokenizer=tokenizer, assistant_tokenizer=assistant_tokenizer)
        methods.append(hf_method(model, f"transformers assisted {name}", eos_ids, name, **extra))
    return methods


def _pad(model: Any, eos_ids: set[int]) -> int | None:
    pad = getattr(model.generation_config, "pad_token_id", None)
    return pad if pad is not None else (min(eos_ids) if eos_ids else None)


def _cut_at_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """Through the first end token, as our decoder emits it (generate pads after it)."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens
