"""Logits -> the distribution actually sampled from, drawing from it, and log-probabilities.

Pure tensor functions: nothing here knows about models. Speculative sampling is exact for the
*adjusted* distribution, so the target's p and the drafter's q both go through `adjusted_probs`
(after penalties.penalize when the request has penalties).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from specdec.sampling.params import SamplingParams


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
    # and the most likely one always: a top_p below float32's range (5e-324) reads as 0
    drop_sorted[..., 0] = False
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




@dataclass
class TokenLogprob:
    """An emitted token's log-probability and its most likely alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token, logprob), most likely first


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """log-softmax of raw logits [n, V] at tokens[i] for row i, with the top `top` of each row.

    The model's own distribution, before temperature, filters and penalties (vLLM's default).
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.arange(len(tokens), device=logits.device)
    chosen = logprobs[rows, torch.tensor(tokens, device=logits.device)].tolist()
    if top > 0:
        values, ids = logprobs.topk(top, dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(),
                                                             strict=True)]
    else:
        tops = [[] for _ in tokens]
    return [TokenLogprob(t, lp, alt) for t, lp, alt in zip(tokens, chosen, tops, strict=True)]
