"""Batched tree verification: each row's own tree, one forward for all rows, every row's
tokens those of the same request decoded alone (`generate`: one row on the runner's own cache,
StaticCausalLM.extend_tree/accept_path) (float32, tiny llama).

Rows join and leave mid-way, line rows (penalties) share the tree steps, and a row whose own
work fails leaves alone while the others' tokens stay the same."""

import contextlib

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.batch import RowFailure
from specdec.drafters.tree import DraftTree
from specdec.models import wrap
from specdec.runtime.rows import SingleRow, StaticRows, make_rows
from test_isolation import run
from tiny import tiny_llama
from tree_fixtures import RandomTrees

VOCAB = 64
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 9, 10, 1, 2, 3, 4] * 4, [7, 3, 9, 3, 9, 3, 1],
           list(range(40, 60)), [5, 9]]
LENGTHS = [30, 12, 24, 18]  # rows leave at different steps; with 3 rows the 4th joins late
GAMMA = 6


@pytest.fixture(scope="module")
def target():
    return wrap(tiny_llama(vocab_size=VOCAB, seed=0))


def _params(rule: str, seed: int, length: int, **extra) -> SamplingParams:
    if rule == "greedy":
        return SamplingParams(temperature=0, max_new_tokens=length, ignore_eos=True, **extra)
    return SamplingParams(temperature=0.9, top_p=0.95, seed=seed, coupled=rule == "coupled",
                          max_new_tokens=length, ignore_eos=True, **extra)


def _drafter(target) -> RandomTrees:
    """Random trees hiding each prompt's greedy continuation among decoys: paths run through
    later children, so accepted keys and values are moved."""
    plain = SpeculativeDecoder(target, None, 0)
    truths = {tuple(p): plain.generate(p, SamplingParams(
        temperature=0, max_new_tokens=max(LENGTHS), ignore_eos=True)).tokens for p in PROMPTS}
    return RandomTrees(VOCAB, GAMMA, seed=3, truths=truths)


def test_rows_verify_each_rows_tree_as_it_is_verified_alone(target):
    """extend_tree over ragged rows (key-block edges crossed) gives each row the logits of
    its tree alone; accept_paths keeps what accept_path keeps (the next line's logits)."""
    prompts = [[(5 * i + r) % VOCAB for i in range(n)] for r, n in enumerate([5, 64, 70, 130])]
    trees = [[-1, 0, 0, 1, 2, 2, 5], [-1, 0, 1], [-1, 0, 0, 0, 3], [-1]]
    paths = [[0, 2, 5, 6], [0, 1], [0, 3, 4], [0]]
    rows = StaticRows(target, max_rows=4)
    for prompt in prompts:
        rows.add(torch.tensor([prompt]), reserve=16)
    width = max(len(t) for t in trees)
    block = torch.tensor([[p[-1], *[(7 * j + r) % VOCAB for j in range(1, width)]]
                          for r, p in enumerate(prompts)])
    logits = rows.extend_tree(block, trees)
    rows.accept_paths(paths)
    after = rows.extend(torch.tensor([[11, 12]] * 4))
    single = wrap(target.model)
    for r, (prompt, parents, path) in enumerate(zip(prompts, trees, paths, strict=True)):
        single.prefill(torch.tensor([prompt]), reserve=16)
        n = len(parents)
        alone = single.extend_tree(block[r:r + 1, :n], parents)
        assert torch.equal(logits[r, :n], alone[0]), r
        single.accept_path(path)
        assert rows.lengths[r] == single.cached_length + 2
        assert torch.equal(after[r], single.extend(torch.tensor([[11, 12]]))[0]), r
        # the kept keys and values are those a line of the path would have written
        line = [block[r, node].item() for node in path] + [11, 12]
        single.prefill(torch.tensor([prompt[:-1] + line[:1]]), reserve=16)
        assert torch.equal(after[r], single.extend(torch.tensor([line]))[0, -2:]), r
    with pytest.raises(RuntimeError, match="needs a tree extend"):
        rows.accept_paths(paths)


@pytest.mark.parametrize("rule, seed", [("greedy", 0), ("coupled", 5), ("sample", 1)])
def test_batched_trees_equal_each_sequence_alone(target, rule, seed):
    """3 rows at a time over 4 prompts (the 4th joins when the first leaves): every row's
    tokens equal those of that prompt alone, trees verified in the batch."""
    params = [_params(rule, seed + i, n) for i, n in enumerate(LENGTHS)]
    decoder = SpeculativeDecoder(target, _drafter(target), GAMMA)
    batched = decoder.generate_batch(PROMPTS, params, max_batch_size=3)
    plain = SpeculativeDecoder(target, None, 0)
    for prompt, p, result in zip(PROMPTS, params, batched, strict=True):
        alone = decoder.generate(prompt, p)  # one sequence
        assert result.tokens == alone.tokens
        if rule != "sample":  # and the text of plain decoding
            assert result.tokens == plain.generate(prompt, p).tokens
        assert len(result.tokens) == p.max_new_tokens
    stats = [r.stats for r in batched]
    assert sum(s.tree_steps for s in stats) > 0 and sum(s.accepted for s in stats) > 0


def test_line_rows_share_tree_steps(target):
    """A penalized request (lines) beside tree rows: everyone's tokens as alone."""
    params = [_params("greedy", 0, n) for n in LENGTHS]
    params[1] = _params("greedy", 0, LENGTHS[1], repetition_penalty=1.3)
    decoder = SpeculativeDecoder(target, _drafter(target), GAMMA)
    batched = decoder.generate_batch(PROMPTS, params)
    for prompt, p, result in zip(PROMPTS, params, batched, strict=True):
        assert result.tokens == decoder.generate(prompt, p).tokens
    assert batched[1].stats.tree_steps == 0 and batched[0].stats.tree_steps > 0


class _Flaky(RandomTrees):
    """RandomTrees that misbehaves for one prompt from its 3rd tree on: `raise` (the
    drafter fails) or `malformed` (a node whose parent comes after it)."""

    def __init__(self, base: RandomTrees, bad: list[int], how: str):
        super().__init__(base.vocab, base.nodes, base.seed, truths=base.truths)
        self.bad, self.how, self.calls = bad, how, 0

    def fork(self):
        return _Flaky(self, self.bad, self.how)

    def propose_tree(self, context, nodes, depth, params, generator, history=None):
        tree = super().propose_tree(context, nodes, depth, params, generator)
        if context[0, : len(self.bad)].tolist() == self.bad and tree.size > 1:
            self.calls += 1
            if self.calls >= 3:
                if self.how == "raise":
                    raise RuntimeError("drafter broke")
                return DraftTree(tree.tokens, [1] + tree.parents[1:])
        return tree


@pytest.mark.parametrize("how", ["raise", "malformed"])
def test_a_failing_tree_row_leaves_alone(target, how):
    """A drafter that raises costs its row drafts only (its tokens stay right); a malformed
    tree makes its row leave alone with a RowFailure. The other rows' tokens are those of a
    batch that never had the bad row."""
    params = [_params("greedy", 0, n) for n in LENGTHS]
    base = _drafter(target)
    decoder = SpeculativeDecoder(target, _Flaky(base, PROMPTS[1], how), GAMMA)
    loop = decoder.batch(make_rows(target, 4))
    added = loop.add_many([(torch.tensor([p]), q) for p, q in zip(PROMPTS, params,
                                                                  strict=True)])
    with pytest.warns(RuntimeWarning) if how == "raise" else contextlib.nullcontext():
        tokens, failed = run(loop, added)
    assert loop.rows.count == 0 and not loop.sequences
    clean = SpeculativeDecoder(target, base, GAMMA)
    for i in (0, 2, 3):
        assert tokens[i] == clean.generate(PROMPTS[i], params[i]).tokens, i
    if how == "raise":
        assert not failed and added[1].stats.drafter_failures > 0
        assert tokens[1] == clean.generate(PROMPTS[1], params[1]).tokens
    else:
        assert list(failed) == [1] and isinstance(failed[1], ValueError)
        assert 0 < len(tokens[1]) < LENGTHS[1]


def test_a_row_failing_in_its_verification_leaves_alone(target, monkeypatch):
    params = [_params("coupled", 7 + i, n) for i, n in enumerate(LENGTHS)]
    decoder = SpeculativeDecoder(target, _drafter(target), GAMMA)
    loop = decoder.batch(make_rows(target, 4))
    added = loop.add_many([(torch.tensor([p]), q) for p, q in zip(PROMPTS, params,
                                                                  strict=True)])
    original, calls = added[2].judge, [0]

    def broken(*args):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("judge broke")
        return original(*args)

    monkeypatch.setattr(added[2], "judge", broken)
    outcomes = []
    index = {id(s): i for i, s in enumerate(added)}
    tokens: dict[int, list[int]] = {i: [] for i in range(4)}
    while loop.sequences:
        for sequence, event in loop.step():
            outcomes.append((index[id(sequence)], event))
            if not isinstance(event, RowFailure):
                tokens[index[id(sequence)]].extend(event.tokens)
    failed = [i for i, e in outcomes if isinstance(e, RowFailure)]
    assert failed == [2]
    for i in (0, 1, 3):
        assert tokens[i] == decoder.generate(PROMPTS[i], params[i]).tokens, i


def test_one_row_over_the_runners_own_cache_verifies_trees(target):
    """`serve --max-batch-size 1` and unforkable drafters: SingleRow passes trees through to
    the runner (and a line-only runner keeps lines)."""
    params = _params("greedy", 0, LENGTHS[0])
    decoder = SpeculativeDecoder(target, _drafter(target), GAMMA)
    loop = decoder.batch(SingleRow(target))
    sequence = loop.add(torch.tensor([PROMPTS[0]]), params)
    tokens, failed = run(loop, [sequence])
    assert not failed and tokens[0] == decoder.generate(PROMPTS[0], params).tokens
    assert sequence.stats.tree_steps > 0
    assert SingleRow(target).verifies_trees
    assert not SingleRow(wrap(tiny_llama(vocab_size=VOCAB), runtime="dynamic")).verifies_trees
