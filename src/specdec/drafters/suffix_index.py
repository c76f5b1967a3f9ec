"""A depth-bounded suffix trie of token streams: how often each short substring occurred, and
what followed it (SuffixDecoding, Oliaro et al. 2024; Arctic Inference's `suffix` method).

Every substring of at most `depth` tokens of the streams added is a path from the root; a
node counts its occurrences. Appending a token extends the `depth` substrings that end at the
stream's end by one node each (O(depth) per token, no rebuild). A context suffix matched to a
node gives the continuations seen after it and their counts, from which `expand` grows a tree
of likely continuations, most probable first.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

# bytes per trie node as measured on CPython 3.12 (a dict entry, its int keys and values, the
# list slots): used to bound an index in bytes
NODE_BYTES = 200


@dataclass
class Continuations:
    """A tree of continuations: tokens, parent indices (-1: after the context), and the
    empirical probability of each node's path (its expected contribution to acceptance)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)

    @property
    def score(self) -> float:
        """Expected accepted tokens if the empirical law were the target's."""
        return sum(self.probs)


class SuffixIndex:
    """Counts of every substring of at most `depth` tokens of the streams added."""

    def __init__(self, depth: int):
        if depth < 2:
            raise ValueError(f"suffix index depth must be >= 2, got {depth}")
        self.depth = depth
        self.kids: list[dict[int, int] | None] = [None]  # node 0: the root
        self.count: list[int] = [0]
        self.level: list[int] = [0]
        self.token: list[int] = [-1]  # the token on the edge into each node
        self._open: list[int] = []  # nodes of the substrings ending at the open stream's end

    @property
    def nodes(self) -> int:
        return len(self.count)

    @property
    def bytes(self) -> int:
        return self.nodes * NODE_BYTES

    def start(self) -> None:
        """Begin a new stream: substrings never span two streams."""
        self._open = []

    def extend(self, tokens: list[int]) -> None:
        """Append tokens to the open stream."""
        kids, count, level, depth = self.kids, self.count, self.level, self.depth
        for token in tokens:
            grown = []
            for node in [0, *self._open]:
                if level[node] >= depth:
                    continue
                table = kids[node]
                if table is None:
                    table = kids[node] = {}
                child = table.get(token)
                if child is None:
                    child = table[token] = len(count)
                    kids.append(None)
                    count.append(0)
                    level.append(level[node] + 1)
                    self.token.append(token)
                count[child] += 1
                grown.append(child)
            self._open = grown

    def match(self, context: list[int], longest: int) -> tuple[int, int]:
        """(node, length) of the longest suffix of `context` (at most `longest` tokens) seen
        with at least one continuation; (0, 0) when none is."""
        for length in range(min(longest, len(context), self.depth - 1), 0, -1):
            node = self._find(context[-length:])
            if node and self.kids[node]:
                return node, length
        return 0, 0

    def expand(self, node: int, nodes: int, depth: int, min_prob: float,
               fan: int | None = None) -> Continuations:
        """Up to `nodes` continuations of `node`, best-first by empirical path probability
        (count(child) / counts of its siblings, multiplied along the path), none below
        min_prob, none deeper than `depth`; fan 1 gives the single most likely line.
        Parents come before their children, siblings in decreasing probability."""
        out = Continuations()
        heap: list[tuple[float, int, int, int, int]] = []  # (-prob, order, node, parent, depth)
        order = 0

        def push(trie_node: int, parent: int, prob: float, at: int) -> None:
            nonlocal order
            table = self.kids[trie_node]
            if not table or at > depth:
                return
            total = sum(self.count[c] for c in table.values())
            ranked = sorted(table.values(), key=lambda c: -self.count[c])[:fan]
            for child in ranked:
                heapq.heappush(heap, (-prob * self.count[child] / total, order, child,
                                      parent, at))
                order += 1

        push(node, -1, 1.0, 1)
        while heap and len(out.tokens) < nodes:
            negative, _, trie_node, parent, at = heapq.heappop(heap)
            if -negative < min_prob:
                break
            index = len(out.tokens)
            out.tokens.append(self.token[trie_node])
            out.parents.append(parent)
            out.probs.append(-negative)
            push(trie_node, index, -negative, at + 1)
        return out

    def _find(self, tokens: list[int]) -> int:
        node = 0
        for token in tokens:
            table = self.kids[node]
            node = table.get(token, 0) if table else 0
            if not node:
                return 0
        return node
