"""Prompt lookup as a tree (drafters/ngram_tree.py): the trie of several matches' continuations
shares common prefixes and keeps to the node budget and depth; its first-child chain is the line
drafter's proposal; tree decoding with it gives plain greedy's tokens and plain seeded text."""

import random

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.control.policy import StepRecord
from specdec.drafters.factory import build_drafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.ngram_tree import NgramTreeDrafter, merge_lines
from specdec.drafters.tree import DraftTree, TreeDrafter
from specdec.models import wrap
from specdec.runtime.tree_attention import tree_depths
from tiny import tiny_llama

GREEDY = SamplingParams(temperature=0)
GEN = torch.Generator()


def paths(tokens: list[int], parents: list[int]) -> set[tuple[int, ...]]:
    """Every node's root path, as tokens."""
    out: set[tuple[int, ...]] = set()
    for node in range(len(parents)):
        path = []
        while node >= 0:
            path.append(tokens[node])
            node = parents[node]
        out.add(tuple(reversed(path)))
    return out


def test_merge_shares_prefixes_and_cuts_best_first():
    lines = [[1, 2, 3, 4], [1, 2, 5, 6], [7, 8, 9, 9], [1, 2, 5, 7]]
    tokens, parents, score = merge_lines(lines, [4.0, 4.0, 2.0, 1.0], 100)
    # 1 2 shared by three lines, 5 by two: 4 + 2 + 4 + 1 nodes, each path once
    assert len(tokens) == 11 and len(paths(tokens, parents)) == 11
    assert all(p < i for i, p in enumerate(parents))  # parents come first
    assert DraftTree(torch.tensor([tokens]), parents).line().tokens.tolist() == [lines[0]]
    assert score == pytest.approx(4.0)  # every node kept: the lines' mean length
    # 6 nodes: the first line, then [1 2] 5 (weight 5), then its child 6 (weight 4), not the
    # lighter 7-branch (2) nor 5's child 7 (1)
    tokens, parents, _ = merge_lines(lines, [4.0, 4.0, 2.0, 1.0], 6)
    assert paths(tokens, parents) == {(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (1, 2, 5),
                                      (1, 2, 5, 6)}
    tokens, parents, _ = merge_lines(lines, [4.0, 4.0, 2.0, 1.0], 3)
    assert (tokens, parents) == ([1, 2, 3], [-1, 0, 1])  # the line first, even over weight
    assert merge_lines([[1, 2], [1, 2]], [1.0, 1.0], 9)[:2] == ([1, 2], [-1, 0])


def _contexts(count: int, seed: int = 0) -> list[list[int]]:
    """Random contexts over a small vocabulary, with copied stretches: many repeated n-grams."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        tokens = [rng.randrange(6) for _ in range(rng.randrange(2, 30))]
        while len(tokens) < 60:
            start = rng.randrange(len(tokens))
            tokens += tokens[start:start + rng.randrange(1, 8)] + [rng.randrange(6)]
        out.append(tokens[:rng.randrange(20, 61)])
    return out


@pytest.mark.parametrize(("nodes", "depth"), [(1, 1), (3, 5), (8, 3), (16, 4), (32, 32)])
def test_tree_respects_the_budget_and_its_line_is_the_line_drafters(nodes, depth):
    lines_seen = branching = 0
    for context in _contexts(40):
        ids = torch.tensor([context])
        tree_drafter, line_drafter = NgramTreeDrafter(1, 3), NgramDrafter(1, 3)
        tree = tree_drafter.propose_tree(ids, nodes, depth, GREEDY, GEN)
        line = line_drafter.propose(ids, min(nodes, depth), GREEDY, GEN)
        assert tree.size <= nodes and max(tree_depths(tree.parents), default=-1) < depth
        assert tree.line().tokens.tolist() == line.tokens.tolist()
        assert tree_drafter.propose(ids, depth, GREEDY, GEN).tokens.tolist() == \
            line_drafter.propose(ids, depth, GREEDY, GEN).tokens.tolist()
        assert tree_drafter.last_match == line_drafter.last_match
        assert len(paths(tree.tokens[0].tolist(), tree.parents)) == tree.size  # merged
        lines_seen += line.length > 0
        branching += tree.size > tree.line().length
    assert lines_seen >= 35
    assert branching >= (20 if nodes > depth else 0)  # spare nodes go to other matches


def test_tree_holds_the_continuations_of_several_matches():
    # "1 2" occurs four times, followed by 3 3, 4 4, 3 5 and (most recent) 6 6
    context = [1, 2, 3, 3, 1, 2, 4, 4, 1, 2, 3, 5, 1, 2, 6, 6, 0, 1, 2]
    tree = NgramTreeDrafter(1, 2).propose_tree(torch.tensor([context]), 16, 2, GREEDY, GEN)
    found = paths(tree.tokens[0].tolist(), tree.parents)
    assert {(6, 6), (3, 3), (4, 4), (3, 5)} <= found
    assert tree.line().tokens.tolist() == [[6, 6]]
    roots = [t for t, p in zip(tree.tokens[0].tolist(), tree.parents, strict=True) if p == -1]
    assert roots[:3] == [6, 3, 4]  # most recent first; 3 shared by two matches


def test_index_is_incremental_and_bounded():
    rng = random.Random(5)
    context = [rng.randrange(3) for _ in range(300)]
    grown = NgramTreeDrafter(1, 4, keep=5)
    for end in [*range(10, 300, 7), 300]:  # the decoder appends a few tokens per step
        grown.propose_tree(torch.tensor([context[:end]]), 8, 4, GREEDY, GEN)
    fresh = NgramTreeDrafter(1, 4, keep=5)
    fresh.begin(torch.tensor([context]))
    assert grown.index == fresh.index
    assert max(len(starts) for table in fresh.index.values() for starts in table.values()) == 5
    for n, table in fresh.index.items():
        for key, starts in table.items():  # the 5 most recent occurrences with a successor
            every = [e for e in range(n, len(context)) if tuple(context[e - n:e]) == key]
            assert starts == every[-5:]


def test_specs_and_protocol():
    assert isinstance(build_drafter("ngram:tree", None, None), TreeDrafter)
    assert not isinstance(build_drafter("ngram", None, None), TreeDrafter)  # lines stay lines
    drafter = build_drafter("ngram:tree:2:5", None, None)
    assert (drafter.min_n, drafter.max_n, drafter.name) == (2, 5, "ngram:tree:2:5")
    assert isinstance(drafter.fork(), NgramTreeDrafter) and drafter.fork().keep == drafter.keep
    for bad in ("ngram:tree:3", "ngram:tree:x:y", "ngram:tree+model"):
        with pytest.raises(ValueError):
            build_drafter(bad, None, None)
    with pytest.raises(ValueError, match="keep"):
        NgramTreeDrafter(keep=0)


@pytest.fixture(scope="module")
def target():
    return wrap(tiny_llama())


PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 9, 10, 1, 2, 3, 4, 5, 6] * 3,
           [7, 3, 9, 3, 9, 3, 1, 7, 3, 9, 4, 7, 3, 2], list(range(40, 60))]


class ShallowWide:
    """A TreePolicy with a fixed budget of 8 nodes no deeper than 2 (so trees branch)."""

    def choose(self) -> int:
        return 8

    def depth_cap(self, budget: int) -> int:
        return 2

    def observe(self, step: StepRecord) -> None:
        pass


@pytest.mark.parametrize("gamma", ["wide", "auto", 4])
def test_ngram_trees_give_plain_greedy_and_seeded_text(target, gamma):
    from specdec.drafters.factory import build_gamma

    policy = {"wide": ShallowWide, "auto": build_gamma("auto")}.get(gamma, gamma)
    tree_steps = 0
    for params in (SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True),
                   SamplingParams(temperature=0.8, seed=3, max_new_tokens=40, ignore_eos=True)):
        for prompt in PROMPTS:
            plain = SpeculativeDecoder(target, None, 0).generate(prompt, params)
            drafter = build_drafter("ngram:tree", target, None)  # type: ignore[arg-type]
            out = SpeculativeDecoder(target, drafter, policy).generate(prompt, params)
            assert out.tokens == plain.tokens
            tree_steps += out.stats.tree_steps
            assert out.stats.drafted > 0
    if gamma == "wide":
        assert tree_steps > 0  # branching trees were verified (and paths through them moved)
    if gamma == 4:
        assert tree_steps == 0  # a fixed gamma's depth is its budget: the tree is the line
