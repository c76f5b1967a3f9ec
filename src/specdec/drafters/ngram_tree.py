"""Prompt lookup as a tree (`--draft ngram:tree`): the continuations after several earlier
occurrences of the context's suffix, merged by common prefixes, verified in one forward.

Occurrences: the `keep` (8) most recent of the longest matching n-gram, then shorter n-grams'
(NgramDrafter.matches; the index keeps `keep` occurrences per n-gram, so a step stays
O(new tokens * sizes) to index plus O(keep * depth) to build the tree). Each gives `depth`
tokens (NgramDrafter.continuation), weighted by its match length n. The tree holds the most
recent longest match's continuation first, as deep as the nodes allow (that is `propose`'s
line, and DraftTree.line() of the tree), then, best-first, the other nodes that the most
weight passes through. Children are ordered by the first occurrence that reached them (the
most recent), so the first-child chain is the line. Candidates are deterministic (q one-hot):
verification is exact under every sampling rule.

The node budget's depth cap decides how many nodes go to the line: with `--gamma auto` the
budget controller (control/budget.py) caps the depth at what the accepted paths reach and the
rest go to width; with a fixed gamma the depth is the budget, so the tree is the line.
"""

from __future__ import annotations

import heapq

import torch

from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.tree import DraftTree
from specdec.sampling import SamplingParams, TokenHistory

KEEP = 8  # occurrences per n-gram, and candidate continuations per step


class NgramTreeDrafter(NgramDrafter):
    """TreeDrafter: prompt lookup's continuations after several matches, as one tree."""

    def __init__(self, min_n: int = 1, max_n: int = 4, keep: int = KEEP):
        super().__init__(min_n, max_n, keep)
        self.name = f"ngram:tree:{min_n}:{max_n}"

    def fork(self) -> NgramTreeDrafter:
        """A drafter for another concurrent sequence (its own index)."""
        return NgramTreeDrafter(self.min_n, self.max_n, self.keep)

    def propose_tree(self, context: torch.Tensor, nodes: int, depth: int,
                     params: SamplingParams, generator: torch.Generator,
                     history: TokenHistory | None = None) -> DraftTree:
        if context.shape[0] != 1:
            raise NotImplementedError("the n-gram drafter supports batch 1 only")
        if nodes <= 0 or depth <= 0:
            return DraftTree.empty()
        self._sync(context)
        found = self.matches(self.keep)
        if not found:
            return DraftTree.empty()
        lines = [self.continuation(start, depth) for start, _ in found]
        tokens, parents, score = merge_lines(lines, [float(n) for _, n in found], nodes)
        return DraftTree(torch.tensor([tokens], dtype=torch.long), parents, score=score)


def merge_lines(lines: list[list[int]], weights: list[float],
                nodes: int) -> tuple[list[int], list[int], float]:
    """The trie of `lines` (common prefixes shared), cut to at most `nodes` nodes: lines[0]
    first (its first `nodes` tokens), then best-first by the weight of the lines through a
    node (ties: the earlier line). Returns tokens, parents (-1: a root; parents come first,
    a node's children in the order of the first line through each, so the first-child chain
    is lines[0]) and the kept nodes' weight over the total (expected tokens on the path if
    one of the lines, drawn by weight, is the truth)."""
    tokens: list[int] = []
    parents: list[int] = []
    weight: list[float] = []
    kids: dict[int, list[int]] = {}  # node (-1: the context) -> its children, in line order
    child: dict[tuple[int, int], int] = {}
    for line, w in zip(lines, weights, strict=True):
        node = -1
        for token in line:
            nxt = child.get((node, token))
            if nxt is None:
                nxt = child[(node, token)] = len(tokens)
                tokens.append(token)
                parents.append(node)
                weight.append(0.0)
                kids.setdefault(node, []).append(nxt)
            weight[nxt] += w
            node = nxt
    line = range(min(len(lines[0]), nodes))  # lines[0] made nodes 0..len-1, a chain
    chosen = set(line)
    frontier = [(-weight[c], c) for p in [-1, *line] for c in kids.get(p, ())
                if c not in chosen]
    heapq.heapify(frontier)
    while len(chosen) < nodes and frontier:
        _, node = heapq.heappop(frontier)
        chosen.add(node)
        for c in kids.get(node, ()):
            heapq.heappush(frontier, (-weight[c], c))
    order = sorted(chosen)  # insertion order: parents first, siblings in line order
    new = {old: i for i, old in enumerate(order)}
    total = sum(weights)
    return ([tokens[i] for i in order], [new.get(parents[i], -1) for i in order],
            sum(weight[i] for i in order) / total if total > 0 else 0.0)
