"""Every drafter keeps the target's output distribution: sampled (chi-square) and greedy (equal).

Statistical tests: N continuations of 3 tokens from SpeculativeDecoder with seeds 0..N-1 are
compared with the exact distribution enumerated over all 8^3 continuations. Cells with an
expected count below 5 are pooled. The test fails when the chi-square p-value is below 1e-3,
a false-alarm rate of 0.1% per test; seeds are fixed, so the outcome is deterministic.
Power (tests/power.py, worst-case direction): N = 1,200 catches a TV bias of 9-12% with 99%
probability (df = pooled bins - 1, 3 to 26 here); the `slow` variants draw the N that
catches 2% (23,708 to 58,720 here, minutes each); test_verify_power covers 2% per token.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from drafter_fixtures import (
    SIZES,
    chi_square_pvalue,
    cross_pair,
    draws_for,
    exact_continuations,
    sampled,
    target_model,
)
from specdec.decoding import SpeculativeDecoder
from specdec.drafters.combined import CombinedDrafter
from specdec.drafters.cross_tokenizer import CrossTokenizerDrafter
from specdec.drafters.model import ModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.ngram_lm import NgramLMDrafter
from specdec.models import wrap
from specdec.sampling import SamplingParams
from tiny import perturbed, tiny_llama

SAMPLES = 1200
LENGTH = 3
FALSE_ALARM = 1e-3


def _random_ids(vocab: int, seed: int, n: int = 20, length: int = 30) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def make_drafter(kind: str, target, seed: int = 0):
    """A drafter of `kind` for target (same vocabulary unless cross)."""
    vocab = target.vocab_size
    if kind == "ngram":
        return NgramDrafter(1, 3)
    if kind in ("unigram", "bigram"):
        order = 1 if kind == "unigram" else 2
        return NgramLMDrafter.from_token_ids(_random_ids(vocab, seed), vocab, order)
    model = wrap(perturbed(target.model, 0.3, seed=seed + 1), name="draft")
    if kind == "model":
        return ModelDrafter(model)
    if kind == "ngram+model":
        return CombinedDrafter(NgramDrafter(2, 3), ModelDrafter(model))
    raise ValueError(kind)


SAMPLING_CASES = [
    ("ngram", [1, 2, 3, 1, 2, 3, 1, 2], 3, SamplingParams(temperature=1.0)),
    ("unigram", [4, 1, 5], 2, SamplingParams(temperature=1.0)),
    ("bigram", [4, 1, 5], 3, SamplingParams(temperature=0.7, top_k=5)),
    ("ngram+model", [1, 2, 3, 1, 2, 4], 2, SamplingParams(temperature=1.0, top_p=0.9)),
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("kind", "prompt", "gamma", "base"), SAMPLING_CASES,
                         ids=[c[0] for c in SAMPLING_CASES])
def test_sampling_matches_target_distribution(kind, prompt, gamma, base, size):
    target = target_model(8, seed=3)
    drafter = make_drafter(kind, target)
    params = SamplingParams(**{**base.__dict__, "max_new_tokens": LENGTH, "ignore_eos": True})
    decoder = SpeculativeDecoder(target, drafter, gamma=gamma)
    exact = exact_continuations(target, prompt, LENGTH, params)
    n = draws_for(size, SAMPLES, exact, FALSE_ALARM)
    counts = sampled(decoder, prompt, params, n)
    assert chi_square_pvalue(counts, exact, n) > FALSE_ALARM


@pytest.mark.parametrize("size", SIZES)
def test_cross_tokenizer_sampling_matches_target_distribution(size):
    target, draft_model = cross_pair(seed=5)
    drafter = CrossTokenizerDrafter(draft_model, target)
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True)
    prompt = [0, 1, 2, 3, 6]  # "abcdab"
    exact = exact_continuations(target, prompt, LENGTH, params)
    n = draws_for(size, SAMPLES, exact, FALSE_ALARM)
    counts = sampled(SpeculativeDecoder(target, drafter, gamma=3), prompt, params, n)
    assert chi_square_pvalue(counts, exact, n) > FALSE_ALARM


def test_chi_square_check_has_power():
    """The same check rejects a wrong distribution: drafts accepted blindly (no verification)."""
    target = target_model(8, seed=3)
    prompt = [4, 1, 5]
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True)
    drafter = make_drafter("unigram", target)
    counts: Counter = Counter()
    for seed in range(SAMPLES):
        g = torch.Generator().manual_seed(seed)
        drafts = drafter.propose(torch.tensor([prompt]), LENGTH, params, g).tokens
        counts[tuple(drafts[0].tolist())] += 1
    exact = exact_continuations(target, prompt, LENGTH, params)
    assert chi_square_pvalue(counts, exact, SAMPLES) < FALSE_ALARM


def _plain_greedy(target, prompt, n):
    params = SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)
    return SpeculativeDecoder(target, None).generate(prompt, params).tokens


GREEDY_PROMPTS = [[1, 2, 3, 4, 1, 2, 3], [7] * 5, [5, 9, 11, 5, 9], [30, 31, 32, 33, 34, 35]]


@pytest.mark.parametrize("kind", ["ngram", "unigram", "bigram", "model", "ngram+model"])
def test_greedy_identical_to_plain_greedy(kind):
    target = wrap(tiny_llama(64, seed=7), name="target")
    params = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)
    for prompt in GREEDY_PROMPTS:
        expected = _plain_greedy(target, prompt, 20)
        for gamma in (1, 2, 4, 7):
            drafter = make_drafter(kind, target, seed=gamma)
            got = SpeculativeDecoder(target, drafter, gamma=gamma).generate(prompt, params)
            assert got.tokens == expected, (kind, prompt, gamma)


def test_cross_tokenizer_greedy_identical_to_plain_greedy():
    target, draft_model = cross_pair(seed=1)
    params = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    for prompt in ([0, 1, 2, 3, 6], [5, 4, 3], [6, 7, 6, 7, 0]):
        expected = _plain_greedy(target, prompt, 16)
        for gamma in (1, 3, 5):
            drafter = CrossTokenizerDrafter(draft_model, target)
            got = SpeculativeDecoder(target, drafter, gamma=gamma).generate(prompt, params)
            assert got.tokens == expected, (prompt, gamma)
            assert got.stats.drafted > 0


def test_cross_tokenizer_rolls_back_instead_of_recomputing():
    """Each step feeds the drafter only the re-tokenized tail, never the whole context."""
    target, draft_model = cross_pair(seed=2)
    fed: list[int] = []
    prefill, extend = draft_model.prefill, draft_model.extend
    draft_model.prefill = lambda ids, reserve=0: fed.append(ids.shape[1]) or prefill(ids, reserve)
    draft_model.extend = lambda tokens, last=None: fed.append(tokens.shape[1]) or extend(tokens,
                                                                                         last)
    drafter = CrossTokenizerDrafter(draft_model, target)
    prompt = [0, 1, 2, 3, 4, 5] * 6
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
    SpeculativeDecoder(target, drafter, gamma=4).generate(prompt, params)
    prompt_length, steps = fed[0], fed[1:]
    assert prompt_length >= 20  # "abcdef" * 6 re-tokenized by the drafter (de, ef merge)
    assert steps and max(steps) <= 4 + 2  # accepted drafts + correction + a re-merged token
    # the cache is exactly the drafter-side prefix it claims to hold
    assert draft_model.cached_length == drafter.cached_ids.shape[1]


def test_int8_model_drafter_from_factory_keeps_greedy_output():
    from specdec.drafters.factory import build_drafter
    from specdec.runtime.quantize import Int8Linear

    target = wrap(tiny_llama(64, seed=7), name="target")
    small = wrap(perturbed(target.model, 0.1, seed=2), name="small")
    drafter = build_drafter("ngram+small@int8", target, lambda spec: {"small": small}[spec])
    assert isinstance(drafter.fallback.model.model.lm_head, Int8Linear)
    assert not isinstance(small.model.lm_head, Int8Linear)  # the loader's model is untouched
    ids = torch.tensor([[5, 9, 11, 5, 9]])
    with torch.no_grad():
        exact = small.model(input_ids=ids).logits
        quantized = drafter.fallback.model.model(input_ids=ids).logits
    assert torch.allclose(exact, quantized, atol=0.05 * exact.abs().max().item())
    params = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)
    expected = _plain_greedy(target, ids[0].tolist(), 20)
    result = SpeculativeDecoder(target, drafter, gamma=3).generate(ids[0].tolist(), params)
    assert result.tokens == expected
    assert result.stats.accepted > 0


def test_bigram_row_cache_is_bounded_in_bytes():
    from specdec.drafters.ngram_lm import ROW_CACHE_BYTES, NgramLMDrafter

    vocab = 151_936  # Qwen's: 4,096 cached rows would take 2.5 GB
    unigram = torch.ones(vocab)
    bigrams = {prev: {prev + 1: 1.0} for prev in range(400)}
    drafter = NgramLMDrafter(unigram, bigrams, order=2)
    for prev in range(400):
        drafter.log_probs(prev)
    cached = sum(row.numel() * row.element_size() for row in drafter._rows.values())
    assert 0 < cached <= ROW_CACHE_BYTES
    assert len(drafter._rows) == drafter.max_cached_rows < 400
