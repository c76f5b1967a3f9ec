"""Tree proposals: several candidate continuations verified in one target forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from specdec.drafters.base import Drafter, Proposal
from specdec.sampling import SamplingParams, TokenHistory


@dataclass
class DraftTree:
    """Draft nodes continuing the context: tokens [1, N], parents[i] an earlier node or -1
    (the node follows the context directly), children of a node in the order verification
    tests them. probs [1, N, V]: the law node i's token was drawn from; None when every node
    is deterministic (q one-hot). Sampled siblings must be drawn i.i.d. from one law, afresh
    for every request (e.g. from the generator `propose_tree` is given; verify_tree.py says
    why): tokens that repeat across requests while claiming a q break exactness."""

    tokens: torch.Tensor
    parents: list[int]
    probs: torch.Tensor | None = None
    forwards: int = 0
    score: float = 0.0  # the drafter's estimate of the tokens it will have accepted

    @property
    def size(self) -> int:
        return len(self.parents)

    def line(self) -> Proposal:
        """The first-child chain from the context: the tree as a line proposal."""
        chain, node = [], -1
        for i, parent in enumerate(self.parents):
            if parent == node:
                chain.append(i)
                node = i
        probs = None if self.probs is None else self.probs[:, chain]
        return Proposal(self.tokens[:, chain], probs, self.forwards)

    @staticmethod
    def empty() -> DraftTree:
        return DraftTree(torch.zeros(1, 0, dtype=torch.long), [])


@runtime_checkable
class TreeDrafter(Drafter, Protocol):
    """A drafter that can propose a tree; `propose` stays its line (batched decoding and
    runners that verify lines only use it)."""

    def propose_tree(self, context: torch.Tensor, nodes: int, depth: int,
                     params: SamplingParams, generator: torch.Generator,
                     history: TokenHistory | None = None) -> DraftTree:
        """At most `nodes` nodes, none deeper than `depth`, continuing context [1, T]."""
        ...
