"""Token-level exactness of the accept/reject rule, with p and q varying across positions, and
the power of that check against mutated rules and against any 2% total-variation bias.

Setup: vocabulary V = 5, k = 3 drafts. The target's p_i(. | x_{i-1}) and the drafter's
q_i(. | x_{i-1}) are different tables at every position i and for every previous token (top-k
filtered: q = 0 where p > 0 and p = 0 where q > 0 both occur). N rows are drawn in one batch:
drafts x_i ~ q_i, one `verify` call, then every row's emitted tokens (accepted prefix + next
token) are completed to k + 1 tokens by sampling the target's own p. An exact rule makes that
whole (k + 1)-token sequence distributed as prod_i p_i(y_i | y_{i-1}); a rule that uses p or q
from the wrong position, forgets a normalization, or sees q from before the filters does not.

Statistic: Pearson chi-square over the 4^4 = 256 possible sequences (every cell expects >= 5,
asserted, so nothing is pooled); reject at alpha = 1e-3, the false-alarm rate of the real
rule's test (seeded: deterministic). N = 120,000 draws: `power.required_draws` gives 93,213
as the smallest N with >= 99% power against every law at TV >= 2% (noncentrality >= 4 N
0.02^2, see tests/power.py); at 120,000 the worst-case power is 99.9%.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from power import (
    least_favourable,
    noncentrality_lower_bound,
    pearson,
    power,
    required_draws,
)
from specdec.sampling import SamplingParams, adjusted_probs, make_generator, sample
from specdec.verify import count_accepted, residual, verify

V, K = 5, 3
DRAWS = 120_000
ALPHA = 1e-3
TV_BIAS = 0.02
POWER = 0.99
CONTEXT = 0  # the token before the first draft
TARGET_FILTER = SamplingParams(temperature=0.9, top_k=4)
DRAFT_FILTER = SamplingParams(temperature=1.2, top_k=3)
DRAFT_RAW = SamplingParams(temperature=1.2)  # the same q before top-k


def _logits(seed: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


P_LOGITS = _logits(11, (K + 1, V, V), 0.8)  # [position, previous token, token]
Q_LOGITS = _logits(12, (K, V, V), 1.0)
P = adjusted_probs(P_LOGITS, TARGET_FILTER)
Q = adjusted_probs(Q_LOGITS, DRAFT_FILTER)
Q_RAW = adjusted_probs(Q_LOGITS, DRAFT_RAW)


def exact_law() -> np.ndarray:
    """P(y_1..y_{k+1}) = prod_i p_i(y_i | y_{i-1}), index sum_i y_i V^(k-i)."""
    law = np.zeros(V ** (K + 1))
    for seq in itertools.product(range(V), repeat=K + 1):
        prev, prob = CONTEXT, 1.0
        for i, token in enumerate(seq):
            prob *= float(P[i, prev, token])
            prev = token
        law[_index(torch.tensor([seq]))[0]] = prob
    return law


def _index(seqs: torch.Tensor) -> np.ndarray:
    weights = V ** torch.arange(K, -1, -1)
    return (seqs * weights).sum(-1).numpy()


def rule(drafts, draft_probs, target_probs, gen, mutation: str | None = None):
    """verify(), re-stated so single lines can be mutated; None is the real rule (asserted
    equal to specdec.verify.verify draw for draw)."""
    rows, k = drafts.shape
    uniforms = torch.rand(rows, k, generator=gen)
    p_x = target_probs[:, :k].gather(-1, drafts[..., None])[..., 0]
    q_x = draft_probs.gather(-1, drafts[..., None])[..., 0]
    accepted = count_accepted(torch.where(q_x > 0, p_x / q_x.clamp_min(1e-38), 0.0), uniforms)
    row = torch.arange(rows)
    p_index = accepted
    if mutation == "bonus from p_k":  # p of the last draft position after all accepted
        p_index = accepted.clamp_max(k - 1)
    elif mutation == "correction from p_{n+2}":  # p one position too far after a rejection
        p_index = torch.where(accepted < k, accepted + 1, accepted)
    p_next = target_probs[row, p_index]
    rejected_at = accepted.clamp_max(k - 1)
    if mutation == "residual with q_n":  # q of the position before the rejected one
        rejected_at = (rejected_at - 1).clamp_min(0)
    q_next = draft_probs[row, rejected_at]
    all_accepted = (accepted == k)[:, None]
    if mutation == "residual not renormalized":
        # max(p - q, 0) taken as probabilities: an inverse-CDF draw on its cumulative sum,
        # the missing mass 1 - sum falls on the last token
        leftover = (p_next - q_next).clamp_min(0)
        probs = torch.where(all_accepted, p_next, leftover)
        u = torch.rand(rows, 1, generator=gen)
        index = torch.searchsorted(probs.cumsum(-1), u).clamp_max(V - 1)[:, 0]
        return accepted, index
    next_probs = torch.where(all_accepted, p_next, residual(p_next, q_next))
    return accepted, sample(next_probs, gen)


def draft_batch(gen: torch.Generator, draws: int, mutation: str | None = None):
    """drafts [N, k] ~ q_i(. | x_{i-1}), the q verification sees [N, k, V], p [N, k+1, V]."""
    prev = torch.full((draws,), CONTEXT)
    drafts, qs, ps = [], [], [P[0, prev]]
    for i in range(K):
        q_i = Q[i, prev]
        token = sample(q_i, gen)
        drafts.append(token)
        qs.append(Q_RAW[i, prev] if mutation == "q before the filters" else q_i)
        ps.append(P[i + 1, token])
        prev = token
    return torch.stack(drafts, 1), torch.stack(qs, 1), torch.stack(ps, 1)


def draw_sequences(seed: int, mutation: str | None = None, draws: int = DRAWS) -> np.ndarray:
    """Counts of the completed (k + 1)-token sequences over `draws` rows, one batch."""
    gen = make_generator(seed)
    drafts, q, p = draft_batch(gen, draws, mutation)
    core = None if mutation == "q before the filters" else mutation  # the caller's bug
    accepted, next_token = rule(drafts, q, p, gen, core)
    return completed_counts(drafts, accepted, next_token, gen)


def completed_counts(drafts: torch.Tensor, accepted: torch.Tensor, next_token: torch.Tensor,
                     gen: torch.Generator) -> np.ndarray:
    """Counts of the (k + 1)-token sequences: each row's emitted tokens (x_1..x_n, then the
    next token), completed from the target's own p."""
    draws = drafts.shape[0]
    seqs = torch.cat([drafts, torch.zeros(draws, 1, dtype=torch.long)], 1)
    seqs[torch.arange(draws), accepted] = next_token
    for j in range(1, K + 1):
        fill = sample(P[j, seqs[:, j - 1]], gen)
        seqs[:, j] = torch.where(j > accepted, fill, seqs[:, j])
    return np.bincount(_index(seqs), minlength=V ** (K + 1)).astype(float)


EXACT = exact_law()
DF = int((EXACT > 0).sum()) - 1
MUTANTS = ["bonus from p_k", "correction from p_{n+2}", "residual with q_n",
           "residual not renormalized", "q before the filters"]


def test_the_setup_varies_p_and_q_and_needs_no_pooling():
    assert DF + 1 == 4 ** (K + 1)  # top-4 of 5 at every position
    assert (DRAWS * EXACT[EXACT > 0]).min() >= 5
    assert not torch.allclose(P[1], P[2]) and not torch.allclose(Q[0], Q[1])
    assert ((Q == 0) & (P[:K] > 0)).any() and ((P[:K] == 0) & (Q > 0)).any()


def test_sample_size_catches_a_two_percent_bias():
    needed = required_draws(DF, TV_BIAS, ALPHA, POWER)
    assert needed <= DRAWS  # 93,213 for df = 255
    assert power(DF, 4 * DRAWS * TV_BIAS**2, ALPHA) >= 0.999


def test_the_local_rule_is_verify():
    gen = make_generator(5)
    drafts, q, p = draft_batch(gen, 5000)
    state = gen.get_state()
    accepted, next_token = rule(drafts, q, p, gen)
    gen.set_state(state)
    verdict = verify(drafts, q, p, gen)
    assert torch.equal(accepted, verdict.accepted) and torch.equal(next_token, verdict.next_token)
    assert len(set(accepted.tolist())) == K + 1  # every outcome occurs, 0..k accepted


def test_real_rule_passes():
    counts = draw_sequences(seed=2024)
    assert counts[EXACT == 0].sum() == 0
    statistic, pvalue = pearson(counts, EXACT)
    assert pvalue > ALPHA, f"chi-square {statistic:.1f}, p-value {pvalue:.2e}"


@pytest.mark.parametrize("mutation", MUTANTS)
def test_each_mutant_is_rejected_with_power(mutation):
    """The same statistic rejects the mutant, and the noncentrality that its statistic
    implies (99.9% lower confidence bound) gives >= 99% power at this N."""
    counts = draw_sequences(seed=7, mutation=mutation)
    statistic, pvalue = pearson(counts, EXACT)
    assert pvalue < ALPHA, f"{mutation}: chi-square {statistic:.1f}, p-value {pvalue:.2e}"
    assert power(DF, noncentrality_lower_bound(statistic, DF), ALPHA) >= POWER


def test_synthetic_two_percent_bias_is_caught_and_exact_law_rarely_flagged():
    """1,000 multinomial replicates of N draws: the least favourable law at TV 2% (smallest
    noncentrality of all TV-2% laws) is rejected >= 99% of the time; the exact law is
    flagged at about the 0.1% false-alarm rate (<= 5 of 1,000)."""
    rng = np.random.default_rng(0)
    biased = least_favourable(EXACT, TV_BIAS)
    assert abs(0.5 * np.abs(biased - EXACT).sum() - TV_BIAS) < 1e-9
    hits = [pearson(c, EXACT)[1] < ALPHA for c in rng.multinomial(DRAWS, biased, size=1000)]
    alarms = [pearson(c, EXACT)[1] < ALPHA for c in rng.multinomial(DRAWS, EXACT, size=1000)]
    assert sum(hits) >= 990, sum(hits)
    assert sum(alarms) <= 5, sum(alarms)
