"""A tree row's parts of the step: its tree, laid out as a block, checked, and what happened.

A request decodes with trees (`uses_trees`) when its drafter proposes trees (drafters/tree.py),
the rows verify them (`verifies_trees`: the static runner) and it has no penalties (their
per-node histories are not implemented); everything else drafts lines (a tree drafter's
`propose` gives its main line). The step itself is step.py's, the same for lines and trees;
Sequence calls these functions for its tree rows and keeps every state change to itself.

Per step: the policy's gamma is the node budget (within the request's max_draft_tokens); a
TreePolicy (`auto`: control/budget.py) also caps the depth, else the budget is the depth cap;
the drafter proposes at most that many nodes; the pending token and the tree are verified in
the step's forward; verify_tree.py decides the path by the request's rule; the cache keeps
that path's keys and values (moved, not recomputed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.acceptance import AcceptanceRule
from specdec.drafters.tree import DraftTree, TreeDrafter
from specdec.language_model import LanguageModel
from specdec.runtime.rows import Rows
from specdec.runtime.tree_attention import is_chain, tree_depths
from specdec.sampling import SamplingParams, adjusted_probs
from specdec.verify_tree import (
    TreeShape,
    TreeVerdict,
    verify_tree,
    verify_tree_coupled,
    verify_tree_greedy,
)


def uses_trees(target: LanguageModel | Rows, drafter: object, params: SamplingParams) -> bool:
    """Whether a request decodes with tree verification (see the module docstring)."""
    return isinstance(drafter, TreeDrafter) and target.verifies_trees and not params.penalized


def propose_tree(drafter: TreeDrafter, context: torch.Tensor, budget: int, depth: int,
                 params: SamplingParams, generator: torch.Generator) -> DraftTree:
    """The drafter's tree of at most `budget` nodes, at most `depth` deep (its errors
    propagate: the caller decides what a broken drafter costs)."""
    tree = drafter.propose_tree(context, budget, depth, params, generator)
    if tree.size > budget:  # the first nodes keep their parents (parents come first)
        tree = DraftTree(tree.tokens[:, :budget], tree.parents[:budget],
                         None if tree.probs is None else tree.probs[:, :budget],
                         tree.forwards, tree.score)
    return tree


def tree_block(pending: int, tree: DraftTree) -> tuple[torch.Tensor, list[int]]:
    """What the target verifies: node 0 is the pending token (the context's last, not yet
    cached), the tree's nodes follow; tokens [N + 1] and parents (checked: ValueError)."""
    parents = [-1] + [p + 1 for p in tree.parents]
    tree_depths(parents)  # a malformed tree is refused before it reaches a forward
    if tree.tokens.shape != (1, tree.size):
        raise ValueError(f"a tree of {tree.size} nodes with tokens {tuple(tree.tokens.shape)}")
    return torch.cat([torch.tensor([pending]), tree.tokens[0].cpu()]), parents


@dataclass
class TreeCheck:
    """A tree row's verification inputs: tokens [N + 1] (node 0 the pending token), parents,
    logits [1, N + 1, V] (the grammar's masks applied), the tree's q per node or None, the
    request's rule and params, and start: the absolute position the root decides."""

    tokens: torch.Tensor
    parents: list[int]
    logits: torch.Tensor
    draft_probs: torch.Tensor | None
    rule: AcceptanceRule
    params: SamplingParams
    start: int

    def verify(self) -> TreeVerdict:
        """The tree's verdict by the request's rule (the one its lines use too)."""
        rule, logits = self.rule, self.logits
        device = logits.device
        shape = TreeShape.of(self.tokens, self.parents, device)
        if rule.name == "greedy":
            return verify_tree_greedy(shape, logits)
        probs = adjusted_probs(logits, self.params)
        if rule.name == "coupled":
            return verify_tree_coupled(shape, self.parents, probs, rule.key, self.start)
        q = self.draft_probs
        if q is not None:  # sampled candidates: q per node, the root's row unused
            q = q.to(device)
            q = torch.cat([torch.zeros_like(q[:, :1]), q], 1)
        return verify_tree(shape, q, probs, [rule.key], self.start)


@dataclass
class TreeOutcome:
    """What a verified tree gave: the accepted tokens, the rejected children of the last
    accepted node, the betas as greedy counts them, and the tree's depth (None: a chain)."""

    accepted: list[int]
    rejected: list[int]
    betas: list[float]
    depth: int | None


def tree_outcome(tokens: list[int], parents: list[int], path: list[int]) -> TreeOutcome:
    """The outcome of keeping `path` (accepted nodes, root excluded) of a tree block."""
    last = path[-1] if path else 0
    tested = [i for i, parent in enumerate(parents) if parent == last]  # all rejected
    return TreeOutcome([tokens[node] for node in path], [tokens[i] for i in tested],
                       [1.0] * len(path) + ([0.0] if tested else []),
                       None if is_chain(parents) else max(tree_depths(parents)))
