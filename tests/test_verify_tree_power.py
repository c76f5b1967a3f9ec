"""Token-level exactness of tree verification, with the power of the check against mutated
rules (tests/power.py explains the power bounds; tests/test_verify_power.py does lines).

Setup: V = 5, a tree of depth 2 with three candidates at the root, two under the first and one
under the second (SHAPE). The target's p(. | previous token) differs at every depth, top-k
filtered; the drafter's q likewise (q = 0 where p > 0 and p = 0 where q > 0 both occur). Two
kinds of candidates: deterministic (fixed tokens, q one-hot; one of them outside the target's
top-k) and sampled (each node's candidates drawn i.i.d. from q given its path, SpecInfer's
multi-step setting). Each of N rows verifies its tree once; its emitted tokens (accepted path,
then the residual or bonus token) are completed to 3 tokens from the target's own p. An exact
rule makes the 3-token sequence distributed as prod_d p_d(y_d | y_{d-1}).

Statistic: Pearson chi-square over the 4^3 = 64 possible sequences (every cell expects >= 5,
asserted); reject at alpha = 1e-3 (the real rule's false-alarm rate; seeded, deterministic).
N = 120,000: above `power.required_draws` for 99% power against every law at TV >= 2%.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from power import noncentrality_lower_bound, pearson, power, required_draws
from specdec.noise import keyed_gumbel_argmax
from specdec.sampling import SamplingParams, adjusted_probs, make_generator, sample
from specdec.verify import residual
from specdec.verify_tree import TreeShape, _walk, child_uniforms, node_keys, verify_tree

V, DEPTH = 5, 3  # vocabulary; emitted sequence length checked (tree depth 2, plus one)
DRAWS = 120_000
ALPHA, TV_BIAS, POWER = 1e-3, 0.02, 0.99
CONTEXT = 0
PARENTS = [-1, 0, 0, 0, 1, 1, 2]  # root: 3 candidates; node 1: 2; node 2: 1
FIXED = [CONTEXT, 2, 4, 1, 3, 0, 2]  # deterministic candidates' tokens (1: p = 0 at the root)


def _logits(seed: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


P = adjusted_probs(_logits(21, (DEPTH, V, V), 0.9), SamplingParams(temperature=0.9, top_k=4))
Q = adjusted_probs(_logits(22, (DEPTH, V, V), 1.0), SamplingParams(temperature=1.2, top_k=3))
DEPTHS = [0, 1, 1, 1, 2, 2, 2]


def exact_law() -> np.ndarray:
    law = np.zeros(V ** DEPTH)
    for seq in itertools.product(range(V), repeat=DEPTH):
        prev, prob = CONTEXT, 1.0
        for d, token in enumerate(seq):
            prob *= float(P[d, prev, token])
            prev = token
        law[_index(torch.tensor([seq]))[0]] = prob
    return law


def _index(seqs: torch.Tensor) -> np.ndarray:
    return (seqs * V ** torch.arange(DEPTH - 1, -1, -1)).sum(-1).numpy()


def trees(gen: torch.Generator, rows: int, sampled: bool, without_replacement: bool = False):
    """Node tokens [B, N], q per node [B, N, V] (None if deterministic), p per node [B, N, V]."""
    if not sampled:
        tokens = torch.tensor(FIXED).expand(rows, -1).clone()
        q = None
    else:
        tokens = torch.full((rows, len(PARENTS)), CONTEXT)
        q = torch.zeros(rows, len(PARENTS), V)
        for parent in range(len(PARENTS)):
            kids = [i for i, p in enumerate(PARENTS) if p == parent]
            if not kids:
                continue
            law = Q[DEPTHS[parent], tokens[:, parent]]  # [B, V]
            if without_replacement:  # the drafter's bug: distinct candidates
                drawn = torch.multinomial(law + 1e-9, len(kids), replacement=False,
                                          generator=gen)
            else:
                drawn = torch.multinomial(law, len(kids), replacement=True, generator=gen)
            for j, kid in enumerate(kids):
                tokens[:, kid], q[:, kid] = drawn[:, j], law
    p = P[torch.tensor(DEPTHS)[None].expand(rows, -1), tokens]  # p after each node
    return tokens, q, p


def reference(shape: TreeShape, q, p, keys: list[int], mutation: str | None = None):
    """verify_tree's rule re-stated so single lines can be mutated (None: the real rule,
    asserted equal to verify_tree draw for draw: the same counter-based noise, rows keyed by
    `keys`, the root deciding position 0)."""
    rows = p.shape[0]
    index = torch.arange(rows)
    at = node_keys(shape, keys, 0)

    def decide(cur):
        kids = shape.children[cur]
        tokens = shape.child_tokens(kids)
        p_node = p[index, cur]
        r, ratios = p_node, []
        for j in range(kids.shape[1]):
            valid, safe, x = kids[:, j] >= 0, kids[:, j].clamp_min(0), tokens[:, j]
            q_j = torch.zeros(rows, V).scatter_(1, x[:, None], 1.0) if q is None \
                else q[index, safe]
            tested = p_node if mutation == "siblings tested against p" else r
            ratio = tested.gather(1, x[:, None])[:, 0] / q_j.gather(1, x[:, None])[:, 0]
            ratios.append(torch.where(valid, ratio.nan_to_num(0.0), 0.0))
            if mutation != "residual keeps the rejected candidate":
                r = torch.where(valid[:, None], residual(r, q_j), r)
        here = at[index, cur]
        hit = child_uniforms(here, kids.shape[1]) < torch.stack(ratios, 1)
        final = p_node if mutation == "final token from p" else r

        def draw(done):
            return keyed_gumbel_argmax(final, here)

        return hit, draw

    return _walk(shape, rows, decide)


def row_keys(gen: torch.Generator, rows: int) -> list[int]:
    """A stream key per row (as Sequence draws one per request): rows draw independently."""
    return torch.randint(0, 2**62, (rows,), generator=gen).tolist()


def draw_sequences(seed: int, sampled: bool, mutation: str | None = None) -> np.ndarray:
    gen = make_generator(seed)
    tokens, q, p = trees(gen, DRAWS, sampled, mutation == "candidates without replacement")
    shape = TreeShape.of(tokens, PARENTS)
    core = None if mutation == "candidates without replacement" else mutation
    keys = row_keys(gen, DRAWS)
    verdict = reference(shape, q, p, keys, core) if core else verify_tree(shape, q, p, keys, 0)
    seqs = torch.zeros(DRAWS, DEPTH, dtype=torch.long)
    for d in range(DEPTH - 1):  # the accepted path's tokens
        node = verdict.nodes[:, d]
        seqs[:, d] = torch.where(node >= 0, tokens.gather(1, node.clamp_min(0)[:, None])[:, 0], 0)
    rows = torch.arange(DRAWS)
    seqs[rows, verdict.accepted] = verdict.next_token
    for d in range(1, DEPTH):  # completed from the target's own p
        fill = sample(P[d, seqs[:, d - 1]], gen)
        seqs[:, d] = torch.where(d > verdict.accepted, fill, seqs[:, d])
    return np.bincount(_index(seqs), minlength=V ** DEPTH).astype(float)


EXACT = exact_law()
DF = int((EXACT > 0).sum()) - 1
DETERMINISTIC_MUTANTS = ["siblings tested against p", "final token from p",
                         "residual keeps the rejected candidate"]
SAMPLED_MUTANTS = ["siblings tested against p", "final token from p",
                   "candidates without replacement"]


def test_the_setup_varies_p_and_q_and_needs_no_pooling():
    assert DF + 1 == 4 ** DEPTH and (DRAWS * EXACT[EXACT > 0]).min() >= 5
    assert required_draws(DF, TV_BIAS, ALPHA, POWER) <= DRAWS
    assert ((Q == 0) & (P > 0)).any() and ((P == 0) & (Q > 0)).any()
    assert float(P[0, CONTEXT, FIXED[3]]) == 0.0  # a candidate the target filters out


@pytest.mark.parametrize("sampled", [False, True])
def test_the_local_rule_is_verify_tree(sampled):
    gen = make_generator(5)
    tokens, q, p = trees(gen, 5000, sampled)
    shape = TreeShape.of(tokens, PARENTS)
    keys = row_keys(gen, 5000)
    mine = reference(shape, q, p, keys)
    real = verify_tree(shape, q, p, keys, 0)
    assert torch.equal(mine.nodes, real.nodes) and torch.equal(mine.next_token, real.next_token)
    # every outcome occurs: each depth reached, both possible root candidates accepted (the
    # deterministic third has p = 0; a sampled third is rarely left any residual mass)
    assert set(real.nodes[:, 0].tolist()) >= {-1, 1, 2}
    assert sampled or 3 not in set(real.nodes[:, 0].tolist())
    assert set(real.accepted.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("sampled", [False, True])
def test_real_rule_passes(sampled):
    counts = draw_sequences(2024, sampled)
    assert counts[EXACT == 0].sum() == 0
    statistic, pvalue = pearson(counts, EXACT)
    assert pvalue > ALPHA, f"chi-square {statistic:.1f}, p-value {pvalue:.2e}"


@pytest.mark.parametrize("sampled, mutation",
                         [(False, m) for m in DETERMINISTIC_MUTANTS] +
                         [(True, m) for m in SAMPLED_MUTANTS])
def test_each_mutant_is_rejected_with_power(sampled, mutation):
    counts = draw_sequences(7, sampled, mutation)
    statistic, pvalue = pearson(counts, EXACT)
    assert pvalue < ALPHA, f"{mutation}: chi-square {statistic:.1f}, p-value {pvalue:.2e}"
    assert power(DF, noncentrality_lower_bound(statistic, DF), ALPHA) >= POWER
