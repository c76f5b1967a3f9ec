"""Sampling parameters and the logits -> adjusted distribution map shared by target and drafter.

Pure tensor functions: nothing here knows about models. Speculative sampling is exact for the
*adjusted* distribution, so the target's p and the drafter's q both go through `adjusted_probs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to turn logits into a distribution, and when to stop.

    temperature 0 means greedy (argmax, a one-hot distribution). top_k 0 and top_p 1 and
    min_p 0 disable those filters.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # keep going past the model's end-of-sequence token

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        _check_number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_number("min_p", self.min_p)
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        mnt = self.max_new_tokens
        if isinstance(mnt, bool) or not isinstance(mnt, int) or mnt < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {mnt!r}")
        stops = tuple(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in stops):
            raise ValueError(f"stop_token_ids must be non-negative integers, got {stops!r}")
        object.__setattr__(self, "stop_token_ids", stops)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def adjusted_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Map logits [..., V] to the distribution actually sampled from, in float32.

    Order as in transformers: temperature, top-k, top-p, min-p. Greedy gives one-hot(argmax).
    """
    logits = logits.float()
    if params.greedy:
        return one_hot(logits.argmax(dim=-1), logits.shape[-1])
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1:
        probs = _top_p(probs, params.top_p)
    if params.min_p > 0:
        floor = params.min_p * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p  # the token that crosses top_p is kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def one_hot(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 one-hot distributions [..., V] at `tokens`."""
    return torch.nn.functional.one_hot(tokens, vocab_size).float()


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row of probs [..., V]; returns [...] int64."""
    flat = probs.reshape(-1, probs.shape[-1])
    drawn = torch.multinomial(flat, 1, generator=generator)
    return drawn.reshape(probs.shape[:-1])


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded from `seed`, or from fresh entropy when seed is None.

    Samples are drawn where the distributions are: no host round trip per draw.
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
