"""Tiny tokenizers and models for the drafter tests (two overlapping vocabularies)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from power import pooled_draws
from specdec.models import wrap
from specdec.sampling import SamplingParams, adjusted_probs
from tiny import tiny_llama

# target: 8 model tokens a-f, ab, cd; its tokenizer also knows "g" (id 8) past the logits width,
# so a drafter must never propose it. drafter: a-g, ba, de, ef.
TARGET_VOCAB = {**{c: i for i, c in enumerate("abcdef")}, "ab": 6, "cd": 7, "g": 8}
TARGET_MERGES = [("a", "b"), ("c", "d")]
DRAFTER_VOCAB = {**{c: i for i, c in enumerate("abcdefg")}, "ba": 7, "de": 8, "ef": 9}
DRAFTER_MERGES = [("b", "a"), ("d", "e"), ("e", "f")]


def bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def target_model(vocab_size: int = 8, seed: int = 0, tokenizer=None):
    return wrap(tiny_llama(vocab_size, seed=seed, layers=1), tokenizer, name="target")


def cross_pair(seed: int = 0):
    """(target, drafter) with different tokenizers: 8 target tokens, 10 drafter tokens."""
    target = target_model(8, seed, bpe_tokenizer(TARGET_VOCAB, TARGET_MERGES))
    drafter = wrap(tiny_llama(10, seed=seed + 100, layers=1),
                   bpe_tokenizer(DRAFTER_VOCAB, DRAFTER_MERGES), name="drafter")
    return target, drafter


def exact_continuations(target, prompt: list[int], length: int,
                        params: SamplingParams) -> dict[tuple[int, ...], float]:
    """P(x_1..x_length | prompt) under the target's adjusted distribution, by enumeration."""
    vocab = target.vocab_size
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    inputs = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], dim=1)
    with torch.no_grad():
        logits = target.model(input_ids=inputs).logits.float()
    start = len(prompt) - 1
    probs = adjusted_probs(logits[:, start:start + length], params)  # [N, length, V]
    per_token = probs.gather(-1, seqs.unsqueeze(-1))[..., 0].double().prod(dim=-1)
    return {tuple(s): float(p) for s, p in zip(seqs.tolist(), per_token, strict=True)}


def chi_square_pvalue(observed: Counter, exact: dict[tuple[int, ...], float], n: int) -> float:
    """Chi-square p-value of observed continuation counts; cells expecting < 5 are pooled."""
    cells = sorted(exact, key=exact.get, reverse=True)
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for cell in cells:
        if exact[cell] * n >= 5:
            obs.append(observed[cell])
            exp.append(exact[cell] * n)
        else:
            pool_o += observed[cell]
            pool_e += exact[cell] * n
    if pool_e == 0 and pool_o:
        return 0.0  # an impossible continuation was emitted
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    total = sum(exp)
    exp = [e * n / total for e in exp]  # float round-off in the enumeration
    return float(chisquare(obs, exp).pvalue)


def sampled(decoder, prompt, params: SamplingParams, samples: int) -> Counter:
    """Continuations from `samples` generations with seeds 0..samples-1, counted."""
    counts: Counter = Counter()
    for seed in range(samples):
        # Algorithm 1's rule (seeded requests default to the coupled one, tested elsewhere)
        run = SamplingParams(**{**params.__dict__, "seed": seed, "coupled": False})
        counts[tuple(decoder.generate(prompt, run).tokens)] += 1
    return counts


# Sizes of the sampled sequence checks: the default suite's N, and (marked slow) the N at which
# the pooled chi-square catches any 2% TV bias with >= 99% probability (tests/power.py).
TV_BIAS, POWER = 0.02, 0.99
SIZES = ["default", pytest.param("2%-TV", marks=pytest.mark.slow)]


def draws_for(size: str, default: int, exact: dict[tuple[int, ...], float] | np.ndarray,
              alpha: float) -> int:
    """`default` for the default suite, else the draws that give the check 2%-TV power."""
    if size == "default":
        return default
    probs = np.array(list(exact.values())) if isinstance(exact, dict) else np.asarray(exact)
    return pooled_draws(probs, TV_BIAS, alpha, POWER)
