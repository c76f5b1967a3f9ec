"""Same tokenizer, different padded logits widths (Qwen2.5-0.5B: 151,936 logits drafting for
Qwen2.5-7B: 152,064): same-vocabulary drafting, exact.

The pair is built that way in miniature: one 8-token tokenizer, a target with 10 logits (ids
8 and 9 are padding the target can still sample), drafters with 9 logits (lacks id 9) and 12
logits (3 padding ids the target lacks), each a resized, perturbed copy of the target.
Sampled checks: chi-square over all 3-token continuations (cells expecting < 5 pooled), fail
below p = 1e-3 (false-alarm rate 0.1% per test, fixed seeds: deterministic).
"""

from __future__ import annotations

import copy

import pytest
import torch

from drafter_fixtures import (
    SIZES,
    bpe_tokenizer,
    chi_square_pvalue,
    cross_pair,
    draws_for,
    exact_continuations,
    sampled,
)
from specdec.decoding import SpeculativeDecoder
from specdec.drafters.cross_tokenizer import CrossTokenizerDrafter
from specdec.drafters.factory import build_drafter
from specdec.drafters.model import ModelDrafter
from specdec.errors import VocabularyMismatchError
from specdec.language_model import logits_at_width
from specdec.models import check_same_vocabulary, wrap
from specdec.sampling import SamplingParams, make_generator
from tiny import perturbed, tiny_llama

TOKENS = {c: i for i, c in enumerate("abcdefgh")}  # ids 0..7: below every width used here
TARGET_WIDTH = 10
SAMPLES = 1200  # default suite; the 2%-TV-sized variant is marked slow
FALSE_ALARM = 1e-3


def _tokenizer(vocab=TOKENS):
    return bpe_tokenizer(vocab, [])


def resized(model: torch.nn.Module, width: int, seed: int = 0) -> torch.nn.Module:
    """A copy of a tiny llama with `width` logits: shared rows copied, new rows random."""
    clone = copy.deepcopy(model)
    keep = min(width, model.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("embed", "head"):
            old = clone.get_input_embeddings() if name == "embed" else clone.lm_head
            rows = torch.randn(width, old.weight.shape[1], generator=gen) * old.weight.std()
            rows[:keep] = old.weight[:keep]
            if name == "embed":
                clone.set_input_embeddings(torch.nn.Embedding(width, rows.shape[1]))
                clone.get_input_embeddings().weight.copy_(rows)
            else:
                clone.lm_head = torch.nn.Linear(rows.shape[1], width, bias=False)
                clone.lm_head.weight.copy_(rows)
    clone.config.vocab_size = width
    return clone


def pair(drafter_width: int, noise: float = 0.3, seed: int = 3):
    """(target, drafter model) sharing one tokenizer, with 10 and `drafter_width` logits."""
    base = tiny_llama(TARGET_WIDTH, seed=seed, layers=1)
    target = wrap(base, _tokenizer(), name="target")
    draft = perturbed(resized(base, drafter_width, seed=seed + 1), noise, seed=seed + 2)
    return target, wrap(draft, _tokenizer(), name=f"draft{drafter_width}")


@pytest.mark.parametrize("width", [9, 12])
def test_same_tokenizer_other_width_is_the_same_vocabulary(width):
    target, drafter = pair(width)
    check_same_vocabulary(target, drafter)  # does not raise
    built = build_drafter("draft", target, lambda name: drafter)
    assert type(built) is ModelDrafter and not isinstance(built, CrossTokenizerDrafter)
    assert built.vocab_size == TARGET_WIDTH


def test_different_tokenizers_are_still_refused():
    target, drafter = cross_pair(seed=5)
    with pytest.raises(VocabularyMismatchError):
        check_same_vocabulary(target, drafter)
    assert isinstance(build_drafter("draft", target, lambda name: drafter), CrossTokenizerDrafter)
    # same widths, different id mappings
    other = {**TOKENS, "a": 1, "b": 0}
    same_width = wrap(tiny_llama(TARGET_WIDTH, seed=1, layers=1), _tokenizer(other), name="d")
    with pytest.raises(VocabularyMismatchError):
        check_same_vocabulary(pair(9)[0], same_width)


def test_different_widths_need_tokenizer_ids_below_both():
    target, _ = pair(12)
    # a tokenizer id (8) past the narrower drafter's 8 logits: it could not draft it
    wide_tokens = {**TOKENS, "i": 8}
    target = wrap(target.model, _tokenizer(wide_tokens), name="target")
    narrow = wrap(tiny_llama(8, seed=1, layers=1), _tokenizer(wide_tokens), name="narrow")
    with pytest.raises(VocabularyMismatchError, match="within both logits widths"):
        check_same_vocabulary(target, narrow)
    assert isinstance(build_drafter("n", target, lambda name: narrow), CrossTokenizerDrafter)
    # without tokenizers nothing says the ids agree: different widths are refused
    with pytest.raises(VocabularyMismatchError):
        check_same_vocabulary(wrap(tiny_llama(10, layers=1)), wrap(tiny_llama(9, layers=1)))


def test_logits_at_width_cuts_or_pads_with_minus_infinity():
    logits = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(logits_at_width(logits, 2), logits[:, :2])
    padded = logits_at_width(logits, 5)
    assert torch.equal(padded[:, :3], logits) and torch.isneginf(padded[:, 3:]).all()
    assert logits_at_width(logits, 3) is logits


@pytest.mark.parametrize("width", [9, 12])
def test_q_has_the_targets_width_and_only_its_ids(width):
    target, drafter = pair(width, noise=1.0)
    model_drafter = ModelDrafter(drafter, TARGET_WIDTH)
    model_drafter.begin(torch.tensor([[0, 1, 9]]))  # 9: target padding the 9-wide one lacks
    proposal = model_drafter.propose(torch.tensor([[0, 1, 9]]), 4,
                                     SamplingParams(temperature=2.0), make_generator(0))
    assert proposal.probs.shape == (1, 4, TARGET_WIDTH)
    torch.testing.assert_close(proposal.probs.sum(-1), torch.ones(1, 4))
    assert (proposal.tokens < min(width, TARGET_WIDTH)).all()
    if width < TARGET_WIDTH:
        assert (proposal.probs[..., width:] == 0).all()


GREEDY_PROMPTS = [[0, 1, 2, 3, 0, 1], [7] * 5, [5, 9, 4], [2, 6, 3, 1, 9, 8]]


@pytest.mark.parametrize("width", [9, 12])
def test_greedy_equals_target_alone_token_for_token(width):
    target, drafter = pair(width, noise=0.2)
    params = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    accepted = 0
    for prompt in GREEDY_PROMPTS:
        expected = SpeculativeDecoder(target, None).generate(prompt, params).tokens
        for gamma in (1, 3, 5):
            result = SpeculativeDecoder(target, drafter, gamma).generate(prompt, params)
            assert result.tokens == expected, (prompt, gamma)
            accepted += result.stats.accepted
    assert accepted > 0  # the drafter's proposals were really used


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("width,params", [
    (9, SamplingParams(temperature=1.0)),
    (12, SamplingParams(temperature=0.8, top_k=6)),
])
def test_sampling_matches_the_target_distribution(width, params, size):
    target, drafter = pair(width)
    run = SamplingParams(**{**params.__dict__, "max_new_tokens": 3, "ignore_eos": True})
    decoder = SpeculativeDecoder(target, build_drafter("draft", target, lambda name: drafter), 3)
    prompt = [4, 1, 5]
    exact = exact_continuations(target, prompt, 3, run)
    n = draws_for(size, SAMPLES, exact, FALSE_ALARM)
    counts = sampled(decoder, prompt, run, n)
    assert chi_square_pvalue(counts, exact, n) > FALSE_ALARM
    if width < TARGET_WIDTH:  # the target's padding id 9 occurs: the drafter was fed it
        assert any(9 in seq for seq in counts)


@pytest.mark.parametrize("width", [9, 12])
def test_batched_greedy_forks_keep_the_targets_width(width):
    target, drafter = pair(width, noise=0.2)
    decoder = SpeculativeDecoder(target, drafter, 3)
    assert decoder.drafter.fork().vocab_size == TARGET_WIDTH
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    alone = [SpeculativeDecoder(target, None).generate(p, params).tokens for p in GREEDY_PROMPTS]
    batched = decoder.generate_batch(GREEDY_PROMPTS, params, max_batch_size=3)
    assert [r.tokens for r in batched] == alone
