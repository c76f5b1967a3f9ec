"""verify_rows: every batch row verified in one call equals the per-row rules.

Greedy and coupled rows bit for bit against verify_greedy / verify_coupled (ragged draft
lengths, with and without q); sample rows (Algorithm 1 on counter-based draws) give each row
the same verdict alone or in any batch, and are exact: chi-square at level 1e-3 on the first
and second emitted tokens and a z-test on the acceptance rate (20,000 rows, fixed seeds).
"""

import numpy as np
import pytest
import torch

from power import pearson
from specdec.verify import overlap, verify_coupled, verify_greedy
from specdec.verify_rows import RowRules, verify_rows

V = 12


def _batch(rows, k, seed=0, q_rows=None):
    g = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(rows, k + 1, V, generator=g) * 2, dim=-1)
    draft = torch.softmax(torch.randn(rows, k, V, generator=g) * 2, dim=-1)
    # drafts: mostly the target's argmax (so some are accepted), some random
    drafts = torch.where(torch.rand(rows, k, generator=g) < 0.7, target[:, :k].argmax(-1),
                         torch.randint(0, V, (rows, k), generator=g))
    lengths = torch.randint(0, k + 1, (rows,), generator=g).tolist()
    has_q = [bool(i % 2) for i in range(rows)] if q_rows is None else q_rows
    return target, draft, drafts, lengths, has_q


@pytest.mark.parametrize("with_q", [False, True])
def test_greedy_and_coupled_rows_equal_the_per_row_rules_bit_for_bit(with_q):
    rows, k = 16, 5
    target, draft, drafts, lengths, has_q = _batch(rows, k, seed=1)
    has_q = has_q if with_q else [False] * rows
    rules = RowRules(lengths, ["greedy" if i % 3 == 0 else "coupled" for i in range(rows)],
                     [1000 + 7 * i for i in range(rows)], [3 * i for i in range(rows)], has_q)
    verdict = verify_rows(drafts, draft if with_q else None, target, rules)
    host = verdict.to_host(drafts, lengths)
    for i, (n, token, drafted, betas) in enumerate(host):
        x, p = drafts[i:i + 1, :lengths[i]], target[i:i + 1, :lengths[i] + 1]
        if rules.rules[i] == "greedy":
            alone = verify_greedy(x, p.log())
        else:
            alone = verify_coupled(x, p, rules.keys[i],
                                   torch.arange(rules.starts[i], rules.starts[i] + lengths[i] + 1))
        assert (n, token) == (int(alone.accepted[0]), int(alone.next_token[0])), i
        assert drafted == x[0].tolist()
        q = draft[i:i + 1, :lengths[i]] if has_q[i] else None
        expected = overlap(p, q, x)[0].tolist()
        assert betas == pytest.approx(expected, abs=1e-6)
    assert any(n > 0 for n, *_ in host) and any(n < k for n, *_ in host)


def test_a_sample_row_gets_the_same_verdict_alone_and_in_any_batch():
    rows, k = 12, 4
    target, draft, drafts, lengths, has_q = _batch(rows, k, seed=2)
    rules = RowRules(lengths, ["sample"] * 8 + ["coupled", "greedy"] * 2,
                     [5 + i for i in range(rows)], [10 * i for i in range(rows)], has_q)
    whole = verify_rows(drafts, draft, target, rules).to_host(drafts, lengths)
    order = list(range(rows))[::-1]
    shuffled = RowRules(*[[getattr(rules, f)[i] for i in order]
                          for f in ("lengths", "rules", "keys", "starts", "has_q")])
    reversed_rows = verify_rows(drafts[order], draft[order], target[order],
                                shuffled).to_host(drafts[order], shuffled.lengths)
    assert reversed_rows[::-1] == whole
    for i in range(rows):
        one = RowRules(*[[getattr(rules, f)[i]] for f in ("lengths", "rules", "keys", "starts",
                                                          "has_q")])
        alone = verify_rows(drafts[i:i + 1], draft[i:i + 1], target[i:i + 1], one)
        assert alone.to_host(drafts[i:i + 1], one.lengths)[0] == whole[i]


def test_sample_rows_are_exact():
    """20,000 independent rows (own stream keys) verify drafts x_i ~ q_i against fixed p:
    the first emitted token is distributed as p_1, the second (rows that kept x_1) as p_2,
    and P(x_1 kept) = beta_1 = sum min(p_1, q_1)."""
    rows, k = 20_000, 2
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(k + 1, V, generator=g), dim=-1)
    q = torch.softmax(torch.randn(k, V, generator=g), dim=-1)
    drafts = torch.stack([torch.multinomial(q[i], rows, replacement=True, generator=g)
                          for i in range(k)], dim=1)
    starts = torch.randint(0, 10_000, (rows,), generator=g).tolist()
    for with_q in (True, False):  # False: deterministic drafts (q one-hot at x)
        rules = RowRules([k] * rows, ["sample"] * rows, list(range(rows)), starts,
                         [with_q] * rows)
        verdict = verify_rows(drafts, q.expand(rows, k, V) if with_q else None,
                              p.expand(rows, k + 1, V), rules)
        n, next_token = verdict.accepted, verdict.next_token
        first = torch.where(n > 0, drafts[:, 0], next_token)
        second = torch.where(n > 1, drafts[:, 1], next_token)[n > 0]
        for tokens, law in ((first, p[0]), (second, p[1])):
            counts = np.bincount(tokens.numpy(), minlength=V)
            assert pearson(counts, law.double().numpy())[1] > 1e-3, with_q
        beta = float(torch.minimum(p[0], q[0]).sum()) if with_q else \
            float((p[0] * q[0]).sum())  # a deterministic draft x ~ q is kept w.p. p(x)
        kept = float((n > 0).double().mean())
        assert abs(kept - beta) < 4 * (beta * (1 - beta) / rows) ** 0.5, with_q
