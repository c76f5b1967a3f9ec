"""Penalties (repetition, frequency, presence, logit bias) stay exact under speculation.

- `penalize` against a naive per-position implementation and transformers' processor;
- greedy float32: token for token equal to transformers' `generate(repetition_penalty=...)`,
  and to a naive full-recompute loop for frequency / presence / bias, with drafters;
- sampling: whole 3-token continuations from speculative sampling with a model drafter
  against the enumerated target distribution with penalties, the history of each position
  including the tokens before it (chi-square p > 1e-4 and TV under its simulated 99.9th
  percentile, as tests/test_exactness_sequence.py: false alarm <= 0.2%).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from drafter_fixtures import cross_pair
from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.cross_tokenizer import CrossTokenizerDrafter
from specdec.drafters.factory import build_drafter
from specdec.drafters.model import ModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.ngram_lm import NgramLMDrafter
from specdec.models import wrap
from specdec.sampling import TokenHistory, adjusted_probs, penalize
from test_exactness_sequence import pooled_chisquare, tv_threshold
from tiny import perturbed, tiny_llama


def naive(logits: torch.Tensor, params: SamplingParams, history: list[int],
          output: list[int]) -> torch.Tensor:
    """One position's logits [V] by the textbook formulas, one token at a time."""
    out = logits.clone().float()
    for token, bias in params.logit_bias:
        out[token] += bias
    for token in set(history):
        rep = params.repetition_penalty
        out[token] = out[token] / rep if out[token] > 0 else out[token] * rep
    for token in set(output):
        out[token] -= params.frequency_penalty * output.count(token) + params.presence_penalty
    return out


STRONG = dict(repetition_penalty=1.8, frequency_penalty=0.9, presence_penalty=0.6,
              logit_bias={3: 1.5, 6: -0.8})


def test_penalize_matches_the_formulas_at_every_draft_position():
    gen = torch.Generator().manual_seed(0)
    vocab, prompt, output, drafts = 11, [1, 4, 4, 9], [4, 2, 2], [2, 7, 4]
    logits = torch.randn(1, len(drafts) + 1, vocab, generator=gen) * 3
    params = SamplingParams(**STRONG)
    context = torch.tensor([prompt + output])
    history = TokenHistory.of(context, len(prompt), vocab)
    got = penalize(logits, params, history, torch.tensor([drafts]))
    for j in range(len(drafts) + 1):
        seen = output + drafts[:j]
        want = naive(logits[0, j], params, prompt + seen, seen)
        assert torch.allclose(got[0, j], want, atol=1e-6), j
    # one position, the drafter's way: history.plus(drafts so far)
    one = penalize(logits[:, 2], params, history.plus(torch.tensor([drafts[:2]])))
    assert torch.allclose(one, got[:, 2])
    # a drafter over part of the vocabulary: the same values at those columns
    columns = torch.tensor([0, 2, 3, 7, 10])
    part = penalize(logits[:, 1, columns], params, history.plus(torch.tensor([drafts[:1]])),
                    columns=columns)
    assert torch.allclose(part, got[:, 1, columns])


def test_repetition_penalty_equals_transformers_processor():
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor([[5, 1, 5, 7, 0]])
    scores = torch.randn(1, 9, generator=gen) * 2
    want = RepetitionPenaltyLogitsProcessor(1.4)(ids, scores.clone())
    got = penalize(scores, SamplingParams(repetition_penalty=1.4), TokenHistory.of(ids, 5, 9))
    assert torch.allclose(got, want)


@pytest.mark.parametrize("field,value", [
    ("repetition_penalty", 0.0), ("repetition_penalty", float("inf")),
    ("frequency_penalty", 2.5), ("presence_penalty", -2.1), ("logit_bias", {-1: 1.0}),
    ("logit_bias", {1: 101.0}), ("logit_bias", {1: float("nan")}), ("logprobs", 21),
    ("logprobs", -1),
])
def test_invalid_penalties_name_the_field(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        SamplingParams(**{field: value})


def test_logit_bias_outside_the_vocabulary_is_refused():
    decoder = SpeculativeDecoder(wrap(tiny_llama(vocab_size=16, layers=1)), None)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder.generate([1, 2], SamplingParams(logit_bias={16: 1.0}))


# --- greedy, float32 ------------------------------------------------------------------------

VOCAB = 32
PROMPT = [3, 17, 17, 5, 9, 3, 17]


def greedy_reference(model, params: SamplingParams, steps: int) -> list[int]:
    """Full forward each step, naive penalties, argmax: no cache, no drafts."""
    ids = list(PROMPT)
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            output = ids[len(PROMPT):]
            ids.append(int(naive(logits, params, ids, output).argmax()))
    return ids[len(PROMPT):]


@pytest.fixture(scope="module")
def pair():
    model = tiny_llama(vocab_size=VOCAB, seed=5)
    return model, perturbed(model, 0.3, seed=6)


@pytest.mark.parametrize("drafter", ["none", "model", "ngram"])
def test_greedy_repetition_penalty_equals_transformers_generate(pair, drafter):
    model, draft_model = pair
    steps = 40
    with torch.inference_mode():
        hf = model.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT),
                            dtype=torch.long), do_sample=False, repetition_penalty=1.3,
                            max_new_tokens=steps, pad_token_id=0)[0, len(PROMPT):].tolist()
    plain = SpeculativeDecoder(wrap(model), None).generate(
        PROMPT, SamplingParams(temperature=0, max_new_tokens=steps)).tokens
    assert hf != plain  # the penalty changes this output
    draft = {"none": None, "model": wrap(draft_model), "ngram": NgramDrafter()}[drafter]
    result = SpeculativeDecoder(wrap(model), draft, 4).generate(
        PROMPT, SamplingParams(temperature=0, max_new_tokens=steps, repetition_penalty=1.3))
    assert result.tokens == hf
    if drafter == "model":
        assert result.stats.accepted > 0


@pytest.mark.parametrize("drafter", ["none", "model", "self@int4", "self@int8@vocab=12"])
def test_greedy_frequency_presence_and_bias_equal_a_naive_loop(pair, drafter):
    model, draft_model = pair
    params = SamplingParams(temperature=0, max_new_tokens=30, **STRONG)
    want = greedy_reference(model, params, 30)
    assert want != greedy_reference(model, SamplingParams(temperature=0), 30)
    target = wrap(model)
    draft = wrap(draft_model) if drafter == "model" else None
    if drafter.startswith("self"):  # the target in low bits, a subset head: penalties by id
        draft = build_drafter(drafter, target, None)
    result = SpeculativeDecoder(target, draft, 3).generate(PROMPT, params)
    assert result.tokens == want
    if draft is not None:
        assert result.stats.accepted > 0


def test_model_drafter_q_is_penalized_with_the_drafts_before_it(pair):
    model, draft_model = pair
    params = SamplingParams(temperature=1.0, **STRONG)
    context = PROMPT + [4, 4, 11]
    drafter = ModelDrafter(wrap(draft_model))
    drafter.begin(torch.tensor([PROMPT]))
    history = TokenHistory.of(torch.tensor([context]), len(PROMPT), VOCAB)
    proposal = drafter.propose(torch.tensor([context]), 4, params,
                               torch.Generator().manual_seed(0), history=history)
    drafts = proposal.tokens[0].tolist()
    with torch.inference_mode():
        logits = draft_model(input_ids=torch.tensor([context + drafts])).logits[0].float()
    for i in range(4):
        seen = context[len(PROMPT):] + drafts[:i]
        want = adjusted_probs(naive(logits[len(context) - 1 + i], params, context + drafts[:i],
                                    seen), params)
        assert torch.allclose(proposal.probs[0, i], want, atol=1e-5), i


@pytest.mark.parametrize("kind", ["cross", "bigram"])
def test_other_drafters_keep_greedy_penalized_output(kind):
    target, draft_model = cross_pair(seed=2)
    drafter = CrossTokenizerDrafter(draft_model, target) if kind == "cross" else \
        NgramLMDrafter.from_token_ids([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]], 8)
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True,
                            repetition_penalty=1.5, frequency_penalty=0.5,
                            logit_bias={7: 0.5})
    prompt = [0, 1, 2, 3, 6]
    want = SpeculativeDecoder(target, None).generate(prompt, params)
    got = SpeculativeDecoder(target, drafter, 3).generate(prompt, params)
    assert got.tokens == want.tokens and got.stats.drafted > 0
    sampled = SpeculativeDecoder(target, drafter, 3).generate(
        prompt, SamplingParams(**{**params.__dict__, "temperature": 1.0, "seed": 1}))
    assert len(sampled.tokens) == 24


# --- sampling: the distribution of whole continuations --------------------------------------

SMALL, LENGTH = 8, 3
SHORT_PROMPT = [1, 5, 2]


def exact_penalized(model, params: SamplingParams) -> torch.Tensor:
    """P(x1 x2 x3 | prompt) with penalties: each position's history is prompt + x_<i."""
    conts = list(itertools.product(range(SMALL), repeat=LENGTH))
    inputs = torch.tensor([SHORT_PROMPT + list(c) for c in conts])
    with torch.inference_mode():
        logits = model(input_ids=inputs).logits.float()
    start = len(SHORT_PROMPT) - 1
    out = torch.empty(len(conts), dtype=torch.float64)
    for row, cont in enumerate(conts):
        prob = 1.0
        for i in range(LENGTH):
            adjusted = naive(logits[row, start + i], params, SHORT_PROMPT + list(cont[:i]),
                             list(cont[:i]))
            prob *= float(adjusted_probs(adjusted, params)[cont[i]])
        out[row] = prob
    return out


def test_penalized_continuations_match_the_target_distribution():
    model = tiny_llama(vocab_size=SMALL, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.15)  # spread the mass out, as test_exactness_sequence
    params = dict(temperature=0.9, repetition_penalty=1.6, frequency_penalty=0.8,
                  presence_penalty=0.5, logit_bias={3: 1.0, 0: -0.7})
    exact = exact_penalized(model, SamplingParams(**params))
    plain = exact_penalized(model, SamplingParams(temperature=0.9))
    assert 0.5 * (exact - plain).abs().sum() > 0.15  # the penalties matter
    decoder = SpeculativeDecoder(wrap(model), wrap(perturbed(model, 0.6, seed=4)), 3)
    draws = 1000
    counts = torch.zeros(SMALL ** LENGTH, dtype=torch.long)
    drafted = accepted = 0
    for seed in range(draws):
        result = decoder.generate(SHORT_PROMPT, SamplingParams(  # Algorithm 1 with penalized q
            **params, seed=seed, coupled=False, max_new_tokens=LENGTH, ignore_eos=True))
        x1, x2, x3 = result.tokens
        counts[x1 * SMALL * SMALL + x2 * SMALL + x3] += 1
        drafted += result.stats.drafted
        accepted += result.stats.accepted
    assert 0.2 < accepted / drafted < 0.95  # rejections happen, at several positions
    assert counts[exact == 0].sum() == 0
    assert pooled_chisquare(counts.double(), exact * draws) > 1e-4
    tv = 0.5 * (counts.double() / draws - exact).abs().sum()
    assert tv < tv_threshold(exact, draws), f"TV {tv:.3f}"
