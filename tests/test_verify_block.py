"""Block verification's exactness (specdec.verify_block, the "block" rule of verify_rows).

Setup as tests/test_verify_power.py (V = 5, k = 3 drafts, p and q tables differing at every
position and previous token, top-k filtered both ways). Three checks:
- exact: the law of the emitted tokens, completed to k + 1 tokens from the target's own p, is
  computed by enumeration over every draft block and every tau (P(tau = i) = h_i prod_{j > i}
  (1 - h_j)) from the module's own weights, thresholds and residuals; it equals the target's
  law to float precision, for sampled and deterministic drafts, and each mutant's law is
  away from it (by 0.9% to 34% in total variation);
- statistical, through verify_rows and its counter-based noise: N = 120,000 rows, Pearson
  chi-square over the 256 sequences, reject at alpha = 1e-3 (the real rule's false-alarm
  rate, seeded: deterministic); power >= 99.9% against every law at TV >= 2%
  (tests/power.py); each mutant at TV >= 2% is rejected, with >= 99% power implied by its
  statistic;
- never fewer tokens: the expected accepted count is >= Algorithm 1's (the paper's example:
  11/9 against 10/9, exactly).
Greedy identity and the seeded text at any batch position end the file.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import specdec.verify_block as block
from power import noncentrality_lower_bound, pearson, power
from specdec import SamplingParams, SpeculativeDecoder
from specdec.models import wrap
from specdec.sampling import make_generator, one_hot
from specdec.verify_rows import RowRules, verify_rows
from test_verify_power import (
    ALPHA,
    CONTEXT,
    DRAWS,
    POWER,
    TV_BIAS,
    K,
    P,
    Q,
    V,
    completed_counts,
    draft_batch,
)
from test_verify_power import EXACT as TARGET_LAW
from test_verify_power import _index as index_of
from tiny import perturbed, tiny_llama

FIXED = [2, 4, 1]  # deterministic drafts (one-hot q)
# mutants of the rule; the exact check rejects each (its law is >= 0.9% away, far past float
# error), the statistical one those >= 2% away (STATISTICAL)
MUTANTS = ["thresholds are the weights", "residual with the previous q",
           "residual without the weight"]
STATISTICAL = MUTANTS[:2]


def _mutated(monkeypatch, mutation: str | None) -> None:
    real_next = block.block_next
    if mutation == "thresholds are the weights":  # every position tested as the last: h_i = w_i
        monkeypatch.setattr(block, "block_thresholds", lambda w, q, p, lengths: torch.where(
            torch.arange(q.shape[1]) < lengths[:, None], w[:, 1:], 0.0))
    elif mutation == "residual with the previous q":  # q_tau instead of q_{tau+1}
        monkeypatch.setattr(block, "block_next", lambda w, q, p, tau, lengths: real_next(
            w, torch.roll(q, 1, 1), p, tau, lengths))
    elif mutation == "residual without the weight":  # Algorithm 1's norm(max(p - q, 0))
        monkeypatch.setattr(block, "block_next", lambda w, q, p, tau, lengths: real_next(
            torch.ones_like(w), q, p, tau, lengths))


def _inputs(drafts: torch.Tensor, sampled: bool):
    """q [N, K, V] the drafts were drawn from (one-hot for fixed drafts) and p [N, K + 1, V]."""
    rows = drafts.shape[0]
    prev = torch.cat([torch.full((rows, 1), CONTEXT), drafts], dim=1)
    q = torch.stack([Q[i, prev[:, i]] for i in range(K)], 1) if sampled else one_hot(drafts, V)
    p = torch.stack([P[i, prev[:, i]] for i in range(K + 1)], 1)
    return q, p


def _completion(seq: tuple[int, ...], start: int) -> float:
    """prod over positions j >= start of p_j(seq_j | seq_{j-1})."""
    prob = 1.0
    for j in range(start, K + 1):
        prob *= float(P[j, seq[j - 1] if j else CONTEXT, seq[j]])
    return prob


def exact_block_law(sampled: bool) -> np.ndarray:
    """The law of the completed (k + 1)-token sequence under block verification, exactly."""
    blocks = torch.tensor(list(itertools.product(range(V), repeat=K))) if sampled \
        else torch.tensor([FIXED])
    q, p = _inputs(blocks, sampled)
    chance = q.gather(-1, blocks[..., None])[..., 0].double().prod(-1) if sampled \
        else torch.ones(1, dtype=torch.float64)
    lengths = torch.full((len(blocks),), K)
    w = block.block_weights(blocks, q, p)
    h = block.block_thresholds(w, q, p, lengths).double()
    law = np.zeros(V ** (K + 1))
    for tau in range(K + 1):
        later = (1 - h[:, tau:]).prod(-1)  # no eta_j < h_j for j > tau
        p_tau = later * (h[:, tau - 1] if tau else 1.0)
        nxt = block.block_next(w, q, p, torch.full((len(blocks),), tau), lengths).double()
        for b, x in enumerate(blocks.tolist()):
            if chance[b] * p_tau[b] == 0:
                continue
            for y in range(V):
                head = (*x[:tau], y)
                for tail in itertools.product(range(V), repeat=K - tau):
                    seq = head + tail
                    law[index_of(torch.tensor([seq]))[0]] += float(
                        chance[b] * p_tau[b] * nxt[b, y]) * _completion(seq, tau + 1)
    return law


@pytest.mark.parametrize("sampled", [True, False])
def test_the_block_law_is_exactly_the_targets(sampled):
    law = exact_block_law(sampled)
    assert abs(law.sum() - 1) < 1e-6
    assert np.abs(law - TARGET_LAW).max() < 1e-6


@pytest.mark.parametrize("mutation", MUTANTS)
def test_each_mutants_law_is_away_from_the_targets(mutation, monkeypatch):
    _mutated(monkeypatch, mutation)
    tv = 0.5 * np.abs(exact_block_law(sampled=True) - TARGET_LAW).sum()
    assert tv >= (TV_BIAS if mutation in STATISTICAL else 0.005), tv


def _expected_accepted(q: torch.Tensor, p: torch.Tensor, drafts: torch.Tensor,
                       chance: torch.Tensor) -> tuple[float, float]:
    """E[tau] under block verification and E[n] under Algorithm 1, over weighted blocks."""
    lengths = torch.full((len(drafts),), drafts.shape[1])
    w = block.block_weights(drafts, q, p)
    h = block.block_thresholds(w, q, p, lengths).double()
    k = drafts.shape[1]
    tau = sum(i * h[:, i - 1] * (1 - h[:, i:]).prod(-1) for i in range(1, k + 1))
    q_x = q.gather(-1, drafts[..., None])[..., 0]
    keep = torch.where(q_x > 0, p[:, :k].gather(-1, drafts[..., None])[..., 0] / q_x,
                       0.0).clamp(max=1).double()  # blocks with q(x) = 0 weigh nothing
    n = keep.cumprod(-1).sum(-1)
    return float((chance * tau).sum()), float((chance * n).sum())


def test_never_fewer_tokens_than_algorithm_1_and_the_papers_example():
    """Sun et al.'s example: p = (1/3, 2/3), q = (2/3, 1/3) at every position, k = 2:
    Algorithm 1 keeps 10/9 tokens on average, block verification 11/9."""
    p1, q1 = torch.tensor([1 / 3, 2 / 3]), torch.tensor([2 / 3, 1 / 3])
    drafts = torch.tensor(list(itertools.product(range(2), repeat=2)))
    chance = q1[drafts].double().prod(-1)
    ours, theirs = _expected_accepted(q1.expand(4, 2, 2), p1.expand(4, 3, 2), drafts, chance)
    assert abs(ours - 11 / 9) < 1e-6 and abs(theirs - 10 / 9) < 1e-6
    blocks = torch.tensor(list(itertools.product(range(V), repeat=K)))
    q, p = _inputs(blocks, sampled=True)
    chance = q.gather(-1, blocks[..., None])[..., 0].double().prod(-1)
    ours, theirs = _expected_accepted(q, p, blocks, chance)
    assert ours >= theirs - 1e-9 and ours > theirs + 0.01  # and strictly more here


def draw_sequences(seed: int, sampled: bool) -> np.ndarray:
    """Counts of completed sequences over DRAWS rows verified by verify_rows' block rule."""
    gen = make_generator(seed)
    if sampled:
        drafts, q, p = draft_batch(gen, DRAWS)
    else:
        drafts = torch.tensor([FIXED]).expand(DRAWS, -1)
        _, p = _inputs(drafts, sampled)
        q = None
    keys = torch.randint(0, 2**62, (DRAWS,), generator=gen).tolist()
    rules = RowRules([K] * DRAWS, ["block"] * DRAWS, keys, [0] * DRAWS, [sampled] * DRAWS)
    verdict = verify_rows(drafts, q, p, rules)
    return completed_counts(drafts, verdict.accepted, verdict.next_token, gen)


DF = int((TARGET_LAW > 0).sum()) - 1


@pytest.mark.parametrize("sampled", [True, False])
def test_the_block_rule_passes_the_token_level_check(sampled):
    counts = draw_sequences(2024, sampled)
    assert counts[TARGET_LAW == 0].sum() == 0
    statistic, pvalue = pearson(counts, TARGET_LAW)
    assert pvalue > ALPHA, f"chi-square {statistic:.1f}, p-value {pvalue:.2e}"


@pytest.mark.parametrize("mutation", STATISTICAL)
def test_each_mutant_is_rejected_with_power(mutation, monkeypatch):
    _mutated(monkeypatch, mutation)
    statistic, pvalue = pearson(draw_sequences(7, sampled=True), TARGET_LAW)
    assert pvalue < ALPHA, f"{mutation}: chi-square {statistic:.1f}, p-value {pvalue:.2e}"
    assert power(DF, noncentrality_lower_bound(statistic, DF), ALPHA) >= POWER


def test_one_hot_p_makes_block_verification_greedy_matching():
    """With p one-hot (temperature 0) block verification keeps exactly the drafts equal to
    the argmax and emits the argmax: the greedy rule's verdict, row for row."""
    rows, k = 500, 4
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, k + 1, V, generator=gen)
    p = one_hot(logits.argmax(-1), V)
    drafts = torch.where(torch.rand(rows, k, generator=gen) < 0.7, logits[:, :k].argmax(-1),
                         torch.randint(V, (rows, k), generator=gen))
    lengths = torch.randint(0, k + 1, (rows,), generator=gen).tolist()
    args = (lengths, [0] * rows, [3] * rows, [False] * rows)
    ours = verify_rows(drafts, None, p, RowRules(lengths, ["block"] * rows, *args[1:]))
    greedy = verify_rows(drafts, None, p, RowRules(lengths, ["greedy"] * rows, *args[1:]))
    assert torch.equal(ours.accepted, greedy.accepted)
    assert torch.equal(ours.next_token, greedy.next_token)


@pytest.fixture(scope="module")
def pair():
    model = tiny_llama(vocab_size=64, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.3)  # spread the mass: rejections happen
    return wrap(model), wrap(perturbed(model, 0.5, seed=1))


PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4]


def test_greedy_with_block_verification_is_plain_greedy(pair):
    target, drafter = pair
    params = SamplingParams(temperature=0, block_verification=True, max_new_tokens=20,
                            ignore_eos=True)
    assert SpeculativeDecoder(target, drafter, 4).generate(PROMPT, params).tokens == \
        SpeculativeDecoder(target, None, 0).generate(PROMPT, params).tokens


def test_seeded_block_text_is_the_same_at_every_batch_position(pair):
    target, drafter = pair
    mine = SamplingParams(temperature=1.0, seed=11, block_verification=True,
                          max_new_tokens=20, ignore_eos=True)
    other = SamplingParams(temperature=0.8, seed=3, max_new_tokens=12, ignore_eos=True)
    decoder = SpeculativeDecoder(target, drafter, 4)
    alone = decoder.generate(PROMPT, mine)
    assert 0 < alone.stats.accepted < alone.stats.drafted
    for batch in ([0, 1], [1, 0], [1, 1, 0]):
        results = decoder.generate_batch([PROMPT if i == 0 else [9, 8, 7] for i in batch],
                                         [mine if i == 0 else other for i in batch])
        assert results[batch.index(0)].tokens == alone.tokens


def test_block_verification_is_chosen_by_the_request():
    assert not SamplingParams(seed=1, block_verification=True).coupled_rule
    with pytest.raises(ValueError, match="block_verification"):
        SamplingParams(coupled=True, block_verification=True)


def test_the_command_line_and_the_server_ask_for_block_verification():
    import argparse

    from specdec.cli.generate import add_sampling_options, sampling_params
    from specdec.server.schemas import APIError, CompletionRequest, parse

    parser = argparse.ArgumentParser()
    add_sampling_options(parser)
    params = sampling_params(parser.parse_args(["--temperature", "1", "--seed", "3",
                                                "--block-verification"]))
    assert params.block_verification and not params.coupled_rule
    assert not sampling_params(parser.parse_args(["--seed", "3"])).block_verification
    body = b'{"prompt": "a", "seed": 3, "block_verification": true}'
    assert parse(CompletionRequest, body).sampling_params(8).block_verification
    with pytest.raises(ValueError, match="block_verification"):
        parse(CompletionRequest, body.replace(b"}", b', "coupled": true}')).sampling_params(8)
    with pytest.raises(APIError):
        parse(CompletionRequest, b'{"prompt": "a", "block_verification": 1}')  # strict bool
