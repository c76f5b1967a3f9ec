"""Token-level exactness of the accept/reject rule.

For each (p, q) pair we draw N = 120,000 independent single-step verifications (one batch row
each, drafts x ~ q) and test that the emitted token is distributed as p. Chi-square test over
bins with expected count >= 5 (rarer tokens pooled), rejecting at p-value < 1e-4: with 26
pairs the family-wise false-alarm rate is <= 26e-4 = 0.26%, and the seeds are fixed, so the
test is deterministic. Tokens with p = 0 must never be emitted (exact count 0).
"""

import zlib

import pytest
import torch
from scipy.stats import chisquare

from specdec.sampling import SamplingParams, adjusted_probs, make_generator, one_hot, sample
from specdec.verify import overlap, residual, verify, verify_greedy

DRAWS = 120_000
P_VALUE_FLOOR = 1e-4
VOCAB = 12


def _logits(seed, scale=2.0):
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def _probs(seed, **kw):
    return adjusted_probs(_logits(seed), SamplingParams(**kw))


def _pairs():
    """(name, p, q) with q None for a deterministic (one-hot) drafter."""
    pairs = []
    for i in range(6):  # plain random pairs, both full support
        pairs.append((f"random{i}", _probs(100 + i), _probs(200 + i)))
    pairs += [
        ("q=0 where p>0", _probs(1), _probs(2, top_k=3)),
        ("p=0 where q>0", _probs(3, top_k=4), _probs(4)),
        ("disjoint-ish", _probs(5, top_k=2), _probs(6, top_k=2)),
        ("top-p both", _probs(7, top_p=0.7), _probs(8, top_p=0.9)),
        ("top-k and top-p", _probs(9, top_k=5), _probs(10, top_p=0.5)),
        ("min-p", _probs(11, min_p=0.1), _probs(12, min_p=0.05)),
        ("temperature 0.1", _probs(13, temperature=0.1), _probs(14, temperature=0.1)),
        ("temperature 2.0", _probs(15, temperature=2.0), _probs(16, temperature=2.0)),
        ("t=0.1 vs t=2.0", _probs(17, temperature=0.1), _probs(17, temperature=2.0)),
        ("q == p", _probs(18), _probs(18)),
        ("q near p", _probs(19), adjusted_probs(_logits(19) + 0.1 * _logits(20), SamplingParams())),
        ("one-hot q as probs", _probs(21), one_hot(torch.tensor(3), VOCAB)),
        ("one-hot q on p=0", _probs(22, top_k=2), one_hot(_logits(22).argmin(), VOCAB)),
        ("uniform q", _probs(23), torch.full((VOCAB,), 1 / VOCAB)),
        ("uniform p", torch.full((VOCAB,), 1 / VOCAB), _probs(24)),
        ("greedy p, random q", _probs(25, temperature=0), _probs(26)),
    ]
    for i, token in enumerate([0, 5, 11]):  # deterministic drafter: q one-hot, probs=None
        pairs.append((f"deterministic x={token}", _probs(300 + i, top_p=0.95), token))
    pairs.append(("deterministic on p=0", _probs(310, top_k=1), int(_logits(310).argmin())))
    return pairs


PAIRS = _pairs()


def _emitted_first_tokens(p, q, k, seed):
    """Run `verify` on DRAWS rows with k drafts from q (same p, q at every position)."""
    gen = make_generator(seed)
    target_probs = p.expand(DRAWS, k + 1, VOCAB)
    if isinstance(q, int):
        drafts, draft_probs = torch.full((DRAWS, k), q), None
    else:
        draft_probs = q.expand(DRAWS, k, VOCAB)
        drafts = sample(draft_probs, gen)
    verdict = verify(drafts, draft_probs, target_probs, gen)
    first = torch.where(verdict.accepted > 0, drafts[:, 0], verdict.next_token)
    return first, verdict


def _assert_distributed_as(samples, p):
    counts = torch.bincount(samples, minlength=VOCAB).double()
    assert counts[p == 0].sum() == 0, "emitted a token the target gives probability 0"
    expected = p.double() * len(samples)
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    if exp[-1] < 5:  # pool too small to test on its own: merge into the last real bin
        obs, exp = torch.cat([obs[:-2], obs[-2:].sum().reshape(1)]), \
            torch.cat([exp[:-2], exp[-2:].sum().reshape(1)])
    exp = exp * obs.sum() / exp.sum()
    if len(obs) < 2:
        return  # all mass on one token, already checked exactly above
    pvalue = chisquare(obs.numpy(), exp.numpy()).pvalue
    assert pvalue > P_VALUE_FLOOR, f"chi-square p-value {pvalue:.2e}"


def test_at_least_twenty_pairs():
    assert len(PAIRS) >= 20


@pytest.mark.parametrize("name,p,q", PAIRS, ids=[name for name, _, _ in PAIRS])
@pytest.mark.parametrize("k", [1, 3])
def test_emitted_token_is_distributed_as_p(name, p, q, k):
    first, _ = _emitted_first_tokens(p, q, k, seed=zlib.crc32(name.encode()) + k)
    _assert_distributed_as(first, p)


@pytest.mark.parametrize("name,p,q", PAIRS[:8], ids=[name for name, _, _ in PAIRS[:8]])
def test_second_token_given_first_accepted_is_distributed_as_p(name, p, q):
    # with the same p at every position, the second emitted token is distributed as p too
    gen = make_generator(8)
    drafts = sample(q.expand(DRAWS, 2, VOCAB), gen)
    verdict = verify(drafts, q.expand(DRAWS, 2, VOCAB), p.expand(DRAWS, 3, VOCAB), gen)
    rows = verdict.accepted >= 1
    second = torch.where(verdict.accepted[rows] >= 2, drafts[rows, 1], verdict.next_token[rows])
    _assert_distributed_as(second, p)


def test_acceptance_probability_is_overlap():
    p, q = _probs(40), _probs(41)
    _, verdict = _emitted_first_tokens(p, q, 1, seed=3)
    beta = float(torch.minimum(p, q).sum())
    rate = verdict.accepted.float().mean().item()
    assert abs(rate - beta) < 5 * (beta * (1 - beta) / DRAWS) ** 0.5
    assert abs(float(overlap(p[None, None], q[None, None], torch.tensor([[0]]))) - beta) < 1e-6


def test_residual_is_normalised_positive_part():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.2, 0.5, 0.2, 0.1])
    torch.testing.assert_close(residual(p, q), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(residual(p, p), p)  # p == q: falls back to p, never NaN


def test_all_accepted_gives_bonus_from_last_position():
    p_draft = one_hot(torch.tensor(2), 5)
    p_bonus = one_hot(torch.tensor(4), 5)
    target = torch.stack([p_draft, p_draft, p_bonus])[None]  # [1, 3, 5]
    verdict = verify(torch.tensor([[2, 2]]), None, target, make_generator(0))
    assert verdict.accepted.tolist() == [2] and verdict.next_token.tolist() == [4]
    assert verdict.emitted(torch.tensor([[2, 2]])) == [2, 2, 4]


def test_rows_are_verified_independently():
    target = torch.stack([one_hot(torch.tensor([1, 2, 3]), 4), one_hot(torch.tensor([1, 0, 3]), 4)])
    drafts = torch.tensor([[1, 2], [1, 2]])
    verdict = verify(drafts, None, target, make_generator(0))
    assert verdict.accepted.tolist() == [2, 1]
    assert verdict.next_token.tolist() == [3, 0]


def test_no_drafts_samples_from_p():
    p = _probs(50)
    verdict = verify(torch.zeros(DRAWS, 0, dtype=torch.long), None,
                     p.expand(DRAWS, 1, VOCAB), make_generator(1))
    assert verdict.accepted.sum() == 0
    _assert_distributed_as(verdict.next_token, p)


def test_greedy_verification_is_the_one_hot_special_case():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(4, 6, VOCAB, generator=gen)
        target_tokens = logits.argmax(-1)
        # drafts agreeing with the target's argmax for a random prefix, then random
        drafts = torch.where(torch.rand(4, 5, generator=gen) < 0.7, target_tokens[:, :5],
                             torch.randint(0, VOCAB, (4, 5), generator=gen))
        greedy = verify_greedy(drafts, logits)
        general = verify(drafts, None, adjusted_probs(logits, SamplingParams(temperature=0)),
                         make_generator(1))
        assert torch.equal(greedy.accepted, general.accepted)
        assert torch.equal(greedy.next_token, general.next_token)
