"""Batched decoding: ragged rows in one target forward, exact per row, reproducible per seed."""

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.control.auto import GammaController
from specdec.drafters.base import Drafter
from specdec.drafters.ngram import NgramDrafter
from specdec.models import wrap
from specdec.runtime.rows import SingleRow, StaticRows, make_rows
from test_exactness_sequence import (
    LENGTH,
    PROMPT,
    VOCAB,
    _target,
    exact_distribution,
    pooled_chisquare,
    tv_threshold,
)
from tiny import perturbed, tiny_llama

PROMPTS = [[3, 17, 9], [5] * 40 + [7, 8], [11, 2, 30, 30, 2, 30, 30, 2], [9], [1, 2, 3, 4] * 9]


@pytest.fixture(scope="module")
def pair():
    model = tiny_llama(vocab_size=64, seed=0)
    return model, perturbed(model, 0.3, seed=2)


def test_rows_give_each_row_its_own_logits(pair):
    """Ragged rows in one forward (blocks padded, rollbacks, a row leaving) give the logits
    each sequence gets alone, float32."""
    model, _ = pair
    single, rows = wrap(model), StaticRows(wrap(model), max_rows=4)

    def alone(cached: list[int], block: list[int]) -> torch.Tensor:
        single.prefill(torch.tensor([cached + block[:1]]))
        return single.extend(torch.tensor([block]))[0]

    for prompt in PROMPTS[:4]:
        rows.add(torch.tensor([prompt]), reserve=8)
    # each block starts with its row's pending token (the prompt's last)
    blocks = [[p[-1], 5 + i, 6 + i] for i, p in enumerate(PROMPTS[:4])]
    logits = rows.extend(torch.tensor(blocks))
    for i, prompt in enumerate(PROMPTS[:4]):
        assert torch.allclose(logits[i], alone(prompt[:-1], blocks[i]), atol=1e-5), i
    rows.rollback([2, 0, 1, 2])  # rows keep 1, 3, 2 and 1 of their blocks
    rows.remove(1)  # the last row moves to index 1
    cached = [PROMPTS[0], PROMPTS[3], PROMPTS[2] + blocks[2][1:2]]
    assert rows.lengths == [len(c) for c in cached]
    blocks = [[20, 21], [22, 23], [24, 25]]
    after = rows.extend(torch.tensor(blocks))
    for row in range(3):
        assert torch.allclose(after[row], alone(cached[row], blocks[row]), atol=1e-5), row


def test_rows_refuse_misuse(pair):
    model, _ = pair
    rows = StaticRows(wrap(model), max_rows=1)
    rows.add(torch.tensor([[1, 2]]))
    with pytest.raises(RuntimeError, match="rows are in use"):
        rows.add(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="one block per row"):
        rows.extend(torch.tensor([[1], [2]]))
    with pytest.raises(ValueError, match="roll back"):
        rows.rollback([5])
    assert isinstance(make_rows(wrap(model, runtime="dynamic"), 1), SingleRow)
    with pytest.raises(ValueError, match="static runner"):
        make_rows(wrap(model, runtime="dynamic"), 2)


@pytest.mark.parametrize("drafter_kind", ["none", "ngram", "model"])
def test_greedy_batch_equals_batch_one(pair, drafter_kind):
    """Mixed prompt lengths and max_new_tokens, a row that stops at its first step, more
    prompts than rows (rows join as others leave): token for token what batch 1 gives."""
    model, draft_model = pair
    drafter = {"none": None, "ngram": NgramDrafter(1, 3), "model": wrap(draft_model)}[drafter_kind]
    decoder = SpeculativeDecoder(wrap(model), drafter, gamma=3)
    lengths = [12, 5, 20, 1, 9]
    params = [SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True) for n in lengths]
    first = decoder.generate(PROMPTS[2], params[2]).tokens[0]
    params[2] = SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=(first,))
    alone = [decoder.generate(p, q) for p, q in zip(PROMPTS, params, strict=True)]
    batched = decoder.generate_batch(PROMPTS, params, max_batch_size=3)
    assert [r.tokens for r in batched] == [r.tokens for r in alone]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in alone]
    assert batched[2].tokens == [first] and batched[2].finish_reason == "stop"


@pytest.mark.parametrize("coupled", [False, True])
def test_same_seed_same_output_alone_and_in_any_batch(pair, coupled):
    """Fixed gamma: a seeded row's tokens do not depend on its batch or its place in it."""
    model, draft_model = pair
    decoder = SpeculativeDecoder(wrap(model), wrap(draft_model), gamma=3)
    mine = SamplingParams(temperature=1.0, seed=1234, max_new_tokens=16, ignore_eos=True,
                          coupled=coupled)
    others = [SamplingParams(temperature=t, seed=s, max_new_tokens=n, ignore_eos=True)
              for t, s, n in [(0.8, 1, 9), (0, None, 30), (1.2, 7, 4)]]
    alone = decoder.generate(PROMPTS[1], mine).tokens
    for position in range(4):
        prompts = PROMPTS[2:5]
        params = list(others)
        prompts.insert(position, PROMPTS[1])
        params.insert(position, mine)
        batched = decoder.generate_batch(prompts, params, max_batch_size=4)
        assert batched[position].tokens == alone, position


def test_rows_are_exact_in_a_batch_of_mixed_parameters():
    """Each row's 3-token continuations follow the target's law for ITS parameters, in batches
    mixing two sampling configurations and greedy rows. False alarms as in
    test_exactness_sequence: chi-square p > 1e-4 and TV under its 99.9th percentile, per
    configuration (family-wise <= 0.2%)."""
    model = _target()
    decoder = SpeculativeDecoder(wrap(model), wrap(perturbed(model, 0.6, seed=4)), gamma=2)
    configs = [dict(temperature=1.0), dict(temperature=0.7, top_k=5)]
    draws = 1500
    prompts, params = [], []
    for seed in range(draws):
        for c, config in enumerate(configs):
            prompts.append(PROMPT)
            params.append(SamplingParams(**config, seed=2 * seed + c, max_new_tokens=LENGTH,
                                         ignore_eos=True, coupled=False))
        if seed % 8 == 0:  # greedy rows of another length ride along
            prompts.append([4, 4, 1, 6, 2])
            params.append(SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True))
    results = decoder.generate_batch(prompts, params, max_batch_size=16)
    drafted = sum(r.stats.drafted for r in results)
    assert 0.2 < sum(r.stats.accepted for r in results) / drafted < 0.95  # rejections matter
    for c, config in enumerate(configs):
        exact = exact_distribution(model, SamplingParams(**config))
        counts = torch.zeros(VOCAB ** LENGTH, dtype=torch.double)
        mine = [r for r, p in zip(results, params, strict=True)
                if p.temperature == config["temperature"]]
        assert len(mine) == draws
        for result in mine:
            x1, x2, x3 = result.tokens
            counts[x1 * VOCAB * VOCAB + x2 * VOCAB + x3] += 1
        assert counts[exact == 0].sum() == 0
        assert pooled_chisquare(counts, exact * draws) > 1e-4
        tv = 0.5 * (counts / draws - exact).abs().sum()
        assert tv < tv_threshold(exact, draws), f"config {c}: TV {tv:.3f}"


def test_auto_gamma_batch_matches_greedy(pair):
    """The batch controller only changes how many tokens are drafted, never the output."""
    model, draft_model = pair
    decoder = SpeculativeDecoder(wrap(model), wrap(draft_model), gamma=GammaController)
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
    alone = [decoder.generate(p, params).tokens for p in PROMPTS]
    assert [r.tokens for r in decoder.generate_batch(PROMPTS, params)] == alone


def test_drafters_that_cannot_fork_run_one_prompt_at_a_time(pair):
    model, _ = pair

    class Lonely(NgramDrafter):
        fork = Drafter.fork  # the protocol's default: ValueError, cannot fork

    decoder = SpeculativeDecoder(wrap(model), Lonely(1, 2), gamma=2)
    assert not decoder.batches()
    params = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    assert [r.tokens for r in decoder.generate_batch(PROMPTS[:3], params)] == \
        [decoder.generate(p, params).tokens for p in PROMPTS[:3]]


def test_generate_batch_checks_its_arguments(pair):
    model, _ = pair
    decoder = SpeculativeDecoder(wrap(model))
    with pytest.raises(ValueError, match="2 params for 1 prompts"):
        decoder.generate_batch([[1]], [SamplingParams(), SamplingParams()])
    with pytest.raises(ValueError, match="max_batch_size"):
        decoder.generate_batch([[1]], max_batch_size=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder.generate_batch([[1], [999]])
    assert decoder.generate_batch([]) == []
