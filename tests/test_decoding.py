"""The decoding loop on tiny float32 models: greedy identity, stopping, events, bad input."""

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.errors import VocabularyMismatchError
from specdec.models import wrap
from tiny import perturbed, tiny_llama, tiny_t5

GREEDY = dict(temperature=0, max_new_tokens=16, ignore_eos=True)
PROMPTS = [torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(i)).tolist()
           for i, n in enumerate([1, 2, 3, 5, 8] * 4)]


@pytest.fixture(scope="module")
def llama_pair():
    target = tiny_llama(seed=0)
    return wrap(target), wrap(perturbed(target, 0.08))


@pytest.fixture(scope="module")
def t5_pair():
    target = tiny_t5(seed=0)
    return wrap(target), wrap(perturbed(target, 0.3))


@pytest.mark.parametrize("pair", ["llama_pair", "t5_pair"])
def test_greedy_equals_plain_greedy(pair, request):
    target, drafter = request.getfixturevalue(pair)
    plain = SpeculativeDecoder(target, None)
    params = SamplingParams(**GREEDY)
    accepted = rejected = 0
    for prompt in PROMPTS:
        expected = plain.generate(prompt, params).tokens
        assert len(expected) == GREEDY["max_new_tokens"]
        for gamma in (1, 2, 4, 8):
            result = SpeculativeDecoder(target, drafter, gamma).generate(prompt, params)
            assert result.tokens == expected, f"prompt {prompt}, gamma {gamma}"
            accepted += result.stats.accepted
            rejected += result.stats.drafted - result.stats.accepted
    # the comparison only means something if drafts were both kept and thrown away
    assert accepted > 100 and rejected > 100


def test_stream_events_add_up(llama_pair):
    target, drafter = llama_pair
    decoder = SpeculativeDecoder(target, drafter, gamma=4)
    params = SamplingParams(temperature=1.0, seed=3, max_new_tokens=40, ignore_eos=True)
    events = list(decoder.stream([1, 2, 3], params))
    tokens = [t for e in events for t in e.tokens]
    stats = events[-1].stats
    assert len(tokens) == 40 == stats.generated
    assert events[-1].finished and events[-1].finish_reason == "length"
    assert not any(e.finished for e in events[:-1])
    assert stats.target_calls == len(events)
    assert stats.drafted == sum(len(e.accepted) + len(e.rejected) for e in events)
    assert stats.accepted == sum(len(e.accepted) for e in events)
    assert stats.drafter_calls == stats.drafted  # one drafter forward per draft token
    for e in events[:-1]:
        assert e.next_token is not None and e.bonus == (not e.rejected)
    assert sum(stats.drafted_at) == stats.drafted and sum(stats.accepted_at) == stats.accepted
    assert 0 < stats.alpha <= 1 and 0 < stats.acceptance_rate <= 1
    assert stats.tokens_per_call == pytest.approx(40 / len(events))
    assert stats.total_s >= stats.drafter_s + stats.target_s > 0
    # same seed, same output: generation is reproducible
    assert decoder.generate([1, 2, 3], params).tokens == tokens


def _self_drafted(target):
    """Drafting with the target's own weights: every draft is accepted, blocks are full."""
    return SpeculativeDecoder(target, wrap(target.model), gamma=8)


def test_stop_token_inside_accepted_block(llama_pair):
    target, _ = llama_pair
    plain = SpeculativeDecoder(target, None).generate([4, 5], SamplingParams(**GREEDY)).tokens
    stop = plain[5]
    cut = plain.index(stop) + 1
    params = SamplingParams(temperature=0, max_new_tokens=24, stop_token_ids=(stop,))
    events = list(_self_drafted(target).stream([4, 5], params))
    tokens = [t for e in events for t in e.tokens]
    assert tokens == plain[:cut]
    assert events[-1].finish_reason == "stop" and events[-1].stats.generated == cut
    assert events[0].stats.accepted >= cut - 1  # the stop token really came inside a block


@pytest.mark.parametrize("max_new", [1, 2, 6, 9, 10])
def test_max_new_tokens_inside_accepted_block(llama_pair, max_new):
    target, _ = llama_pair
    params = SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True)
    plain = SpeculativeDecoder(target, None).generate([7], params).tokens
    result = _self_drafted(target).generate([7], params)
    assert result.tokens == plain and len(plain) == max_new
    assert result.finish_reason == "length"
    assert result.stats.drafted <= max_new  # never drafts past the end


def test_eos_of_the_model_stops_unless_ignored():
    model = tiny_llama(seed=0)
    target = wrap(model)
    plain = SpeculativeDecoder(target, None).generate([3, 9], SamplingParams(**GREEDY)).tokens
    model.generation_config.eos_token_id = plain[3]
    result = _self_drafted(target).generate([3, 9], SamplingParams(temperature=0))
    assert result.tokens == plain[: plain.index(plain[3]) + 1]
    assert result.finish_reason == "stop"


def test_plain_decoding_uses_one_target_call_per_token(llama_pair):
    target, drafter = llama_pair
    for decoder in (SpeculativeDecoder(target, None), SpeculativeDecoder(target, drafter, 0)):
        stats = decoder.generate([1, 2], SamplingParams(**GREEDY)).stats
        assert stats.target_calls == stats.generated and stats.drafted == 0


@pytest.mark.parametrize("gamma", [-1, 1.5, True, "3"])
def test_invalid_gamma(llama_pair, gamma):
    with pytest.raises(ValueError, match="gamma"):
        SpeculativeDecoder(llama_pair[0], llama_pair[1], gamma=gamma)


@pytest.mark.parametrize("prompt", ["", [], torch.zeros(0, dtype=torch.long)])
def test_empty_prompt(llama_pair, prompt):
    with pytest.raises(ValueError, match="prompt is empty"):
        SpeculativeDecoder(llama_pair[0], None).generate(prompt)


def test_prompt_out_of_vocabulary(llama_pair):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        SpeculativeDecoder(llama_pair[0], None).generate([1, 64])


def test_text_prompt_needs_tokenizer(llama_pair):
    with pytest.raises(ValueError, match="tokenizer"):
        SpeculativeDecoder(llama_pair[0], None).generate("hello")


def test_context_window_is_enforced(llama_pair):
    with pytest.raises(ValueError, match="max_new_tokens"):
        SpeculativeDecoder(llama_pair[0], None).generate(
            [1] * 10, SamplingParams(max_new_tokens=503))


def test_vocabulary_mismatch_is_refused(llama_pair):
    other = wrap(tiny_llama(vocab_size=80, seed=2), name="other-80")
    with pytest.raises(VocabularyMismatchError, match="other-80.*80 logits.*64 logits"):
        SpeculativeDecoder(llama_pair[0], other)


def test_drafter_must_not_share_the_targets_cache(llama_pair):
    with pytest.raises(ValueError, match="same object"):
        SpeculativeDecoder(llama_pair[0], llama_pair[0])
