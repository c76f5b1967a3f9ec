"""Sequence-level tests of tree decoding on tiny models: greedy trees give plain greedy output
bit for bit, seeded (coupled) trees give plain seeded sampling's text, Algorithm 1 over trees
gives the target's distribution of whole continuations."""

import pytest
import torch

from drafter_fixtures import TV_BIAS
from power import pooled_draws
from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.factory import build_drafter
from specdec.drafters.suffix import SuffixDrafter
from specdec.models import wrap
from test_exactness_sequence import (
    LENGTH,
    PROMPT,
    VOCAB,
    _target,
    exact_distribution,
    pooled_chisquare,
    tv_threshold,
)
from tiny import tiny_llama
from tree_fixtures import RandomTrees

PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 9, 10, 1, 2, 3, 4, 5, 6] * 3,
           [7, 3, 9, 3, 9, 3, 1], list(range(40, 60))]


@pytest.fixture(scope="module")
def target():
    return wrap(tiny_llama())


def _plain(target, prompt, params):
    return SpeculativeDecoder(target, None, 0).generate(prompt, params)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("nodes", [3, 8, 16])
def test_greedy_trees_give_plain_greedy_output(target, prompt, nodes):
    params = SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True)
    plain = _plain(target, prompt, params)
    drafter = RandomTrees(64, nodes, seed=nodes, truth=plain.tokens)
    spec = SpeculativeDecoder(target, drafter, nodes).generate(prompt, params)
    assert spec.tokens == plain.tokens
    stats = spec.stats
    assert stats.tree_steps > 0 and stats.accepted > 0 and stats.target_calls < 40


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_coupled_trees_give_plain_seeded_text(target, prompt, seed):
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=seed, max_new_tokens=40,
                            ignore_eos=True)
    plain = _plain(target, prompt, params)
    drafter = RandomTrees(64, 8, seed=seed, truth=plain.tokens)
    spec = SpeculativeDecoder(target, drafter, 8).generate(prompt, params)
    assert spec.tokens == plain.tokens
    assert spec.stats.tree_steps > 0 and spec.stats.accepted > 0


@pytest.mark.parametrize("spec", ["suffix", "suffix:factor=3", "suffix:global"])
def test_suffix_drafter_greedy_equals_plain_and_saves_calls(target, spec):
    params = SamplingParams(temperature=0, max_new_tokens=48, ignore_eos=True)
    drafter = build_drafter(spec, target, loader=None)  # type: ignore[arg-type]
    assert isinstance(drafter, SuffixDrafter)
    for prompt in PROMPTS:
        plain = _plain(target, prompt, params)
        spec_out = SpeculativeDecoder(target, drafter, 8).generate(prompt, params)
        assert spec_out.tokens == plain.tokens
    assert spec_out.stats.target_calls < plain.stats.target_calls


@pytest.mark.parametrize("draws, sampled", [
    (1000, False), pytest.param(None, False, marks=pytest.mark.slow),
    pytest.param(3000, True, marks=pytest.mark.slow)])
def test_tree_sampling_matches_the_target_distribution(draws, sampled):
    """Algorithm 1 over random trees (deterministic candidates): 3-token continuations against
    the exact law with tests/test_exactness_sequence.py's checks (false-alarm rate <= 0.1% +
    0.01%). 1,000 draws catch any TV bias of 15% with 99% probability (pooled chi-square,
    df 46); the token-level tests (test_verify_tree_power.py) carry the 2% power. `slow`: the
    141,230 draws that catch 2% here; and candidates drawn i.i.d. uniform, verified with that q."""
    model = _target()
    target = wrap(model)
    params = dict(temperature=1.0)
    exact = exact_distribution(model, SamplingParams(**params))
    if draws is None:
        draws = pooled_draws(exact.numpy(), TV_BIAS, 1e-4, 0.99)
    counts = torch.zeros(VOCAB ** LENGTH, dtype=torch.long)
    decoder = SpeculativeDecoder(target, RandomTrees(VOCAB, 6, seed=1, sampled=sampled), 6)
    trees = accepted = 0
    for seed in range(draws):  # a token more than checked: the first tree gets 3 nodes
        result = decoder.generate(PROMPT, SamplingParams(
            **params, seed=seed, coupled=False, max_new_tokens=LENGTH + 1, ignore_eos=True))
        x1, x2, x3 = result.tokens[:LENGTH]
        counts[x1 * VOCAB * VOCAB + x2 * VOCAB + x3] += 1
        trees += result.stats.tree_steps
        accepted += result.stats.accepted
    assert trees > draws / 2 and accepted > draws / 5  # trees verified, candidates accepted
    assert counts[exact == 0].sum() == 0
    assert pooled_chisquare(counts.double(), exact * draws) > 1e-4
    tv = 0.5 * (counts.double() / draws - exact).abs().sum()
    assert tv < tv_threshold(exact, draws), f"TV {tv:.3f}"


def test_sampled_candidates_are_verified_with_their_q():
    """The loop hands the tree's q to verification: with q = 1/8 a candidate is accepted
    w.p. min(1, 8 p(x)) instead of p(x), so far more often."""
    target = wrap(_target())
    accepted = {}
    for sampled in (False, True):
        decoder = SpeculativeDecoder(target, RandomTrees(VOCAB, 6, seed=1, sampled=sampled), 6)
        accepted[sampled] = sum(decoder.generate(PROMPT, SamplingParams(
            temperature=1.0, seed=seed, coupled=False, max_new_tokens=8,
            ignore_eos=True)).stats.accepted for seed in range(40))
    assert accepted[True] > 2 * accepted[False] > 0


def test_lines_elsewhere_penalties_and_dynamic_runner(target):
    """Penalized requests and line-only runners decode the tree drafter's main line."""
    prompt = PROMPTS[0]
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True,
                            repetition_penalty=1.3)
    spec = SpeculativeDecoder(target, SuffixDrafter(), 6).generate(prompt, params)
    assert spec.stats.tree_steps == 0 and spec.tokens == _plain(target, prompt, params).tokens
    dynamic = wrap(tiny_llama(), runtime="dynamic")
    greedy = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
    out = SpeculativeDecoder(dynamic, RandomTrees(64, 8), 6).generate(prompt, greedy)
    assert out.stats.tree_steps == 0 and out.tokens == _plain(target, prompt, greedy).tokens


def test_batched_suffix_decoding_equals_plain(target):
    """Batch rows verify the suffix drafter's trees (tests/test_batch_trees.py); greedy text is
    plain greedy's."""
    prompts = PROMPTS[:2]
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
    results = SpeculativeDecoder(target, SuffixDrafter(), 6).generate_batch(prompts, params)
    for prompt, result in zip(prompts, results, strict=True):
        assert result.tokens == _plain(target, prompt, params).tokens
    assert sum(r.stats.accepted for r in results) > 0
