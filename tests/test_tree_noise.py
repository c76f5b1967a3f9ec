"""Trees draw counter-based noise, as lines do: a tree's verdict is a function of the
request's stream key and its token positions only, so a seed means the same draws for lines
and trees, at any batch position, beside any other rows (tiny llama, float32)."""

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.models import wrap
from specdec.sampling import adjusted_probs
from specdec.verify_rows import RowRules, verify_rows
from specdec.verify_tree import TreeShape, verify_tree
from tiny import tiny_llama
from tree_fixtures import RandomTrees

V = 11


def _laws(seed: int, rows: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    p = adjusted_probs(torch.randn(rows, n, V, generator=gen), SamplingParams(top_k=6))
    q = adjusted_probs(torch.randn(rows, n, V, generator=gen), SamplingParams(top_k=5))
    return p, q


@pytest.mark.parametrize("with_q", [False, True])
def test_a_chain_draws_what_the_line_rule_draws_bit_for_bit(with_q):
    """Node d of a chain decides position start + d with the line's uniform and Gumbel noise:
    over many keys the two verdicts agree exactly (accepted counts and next tokens)."""
    rows, k, start = 4000, 4, 17
    p, q = _laws(1, rows, k + 1)
    # sampled drafts from q, or deterministic ones: p's argmax (kept often enough to see k)
    drafts = torch.multinomial(q[:, :k].reshape(-1, V), 1, generator=torch.Generator()
                               .manual_seed(2)).view(rows, k) if with_q else p[:, :k].argmax(-1)
    keys = torch.randint(0, 2**62, (rows,), generator=torch.Generator().manual_seed(3)).tolist()
    line = verify_rows(drafts, q[:, :k] if with_q else None, p,
                       RowRules([k] * rows, ["sample"] * rows, keys, [start] * rows,
                                [with_q] * rows))
    tokens = torch.cat([torch.zeros(rows, 1, dtype=torch.long), drafts], dim=1)
    shape = TreeShape.of(tokens, list(range(-1, k)))
    tree_q = torch.cat([torch.zeros_like(q[:, :1]), q[:, :k]], dim=1) if with_q else None
    tree = verify_tree(shape, tree_q, p, keys, start)
    assert torch.equal(tree.accepted, line.accepted)
    assert torch.equal(tree.next_token, line.next_token)
    assert 0 < int((line.accepted == k).sum()) < rows  # both ends occur: the check bites


def test_a_tree_verdict_depends_on_its_key_and_positions_only():
    """Each row's verdict alone equals its verdict among others; the global and any other
    generator's state play no part; another key or start gives other draws."""
    parents = [-1, 0, 0, 0, 1, 1, 2, 4]
    rows = 64
    p, _ = _laws(4, rows, len(parents))
    tokens = torch.randint(V, (rows, len(parents)), generator=torch.Generator().manual_seed(5))
    shape = TreeShape.of(tokens, parents)
    keys = list(range(1000, 1000 + rows))
    together = verify_tree(shape, None, p, keys, 40)
    torch.manual_seed(123)
    for i in (0, 17, 63):
        alone = verify_tree(TreeShape.of(tokens[i:i + 1], parents), None, p[i:i + 1], [keys[i]],
                            40)
        assert alone.path(0) == together.path(i)
        assert int(alone.next_token[0]) == int(together.next_token[i])
    again = verify_tree(shape, None, p, keys, 40)
    assert torch.equal(again.nodes, together.nodes)
    assert torch.equal(again.next_token, together.next_token)
    moved = verify_tree(shape, None, p, keys, 41)
    assert not torch.equal(moved.next_token, together.next_token)


@pytest.fixture(scope="module")
def target():
    return wrap(tiny_llama(vocab_size=64, seed=0))


PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 9, 10, 1, 2, 3, 4]
OTHERS = [[7, 3, 9, 3, 9, 3, 1], list(range(40, 60)), [5, 9, 5, 9]]


@pytest.mark.parametrize("sampled", [False, True])
def test_seeded_tree_text_is_the_same_at_every_batch_position_and_beside_any_rows(target,
                                                                                  sampled):
    """The same seeded Algorithm 1 request (coupled=False: the rule whose draws trees took
    from a torch generator before) alone, first, last and in the middle of batches of other
    requests (trees, a penalized line row, a greedy row): one text."""
    mine = SamplingParams(temperature=0.9, seed=77, coupled=False, max_new_tokens=24,
                          ignore_eos=True)
    others = [SamplingParams(temperature=1.0, seed=5, coupled=False, max_new_tokens=9,
                             ignore_eos=True),
              SamplingParams(temperature=0, max_new_tokens=30, ignore_eos=True,
                             repetition_penalty=1.2),
              SamplingParams(temperature=0.7, seed=9, max_new_tokens=14, ignore_eos=True)]
    decoder = SpeculativeDecoder(target, RandomTrees(64, 6, seed=3, sampled=sampled), 6)
    alone = decoder.generate(PROMPT, mine)
    assert alone.stats.tree_steps > 0
    for batch in ([0, 1], [1, 0], [1, 0, 2], [2, 3, 0], [3, 2, 1, 0]):
        prompts = [PROMPT if i == 0 else OTHERS[i - 1] for i in batch]
        params = [mine if i == 0 else others[i - 1] for i in batch]
        results = decoder.generate_batch(prompts, params)
        assert results[batch.index(0)].tokens == alone.tokens, batch
