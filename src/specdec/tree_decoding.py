"""One sequence's part of a tree step: propose its tree, lay it out, verify it.

A request decodes with trees (`uses_trees`) when its drafter proposes trees (drafters/tree.py),
the rows verify them (`verifies_trees`: the static runner) and it has no penalties (their
per-node histories are not implemented); everything else verifies lines (a tree drafter's
`propose` gives its main line). The step itself, one target forward for every row of a batch
(one row for SpeculativeDecoder.stream), is batch_trees.py; these functions are each row's
part of it.

Per step: the policy's gamma is the node budget (within the request's max_draft_tokens); a
TreePolicy (`auto`: control/budget.py) also caps the depth, else the budget is the depth cap;
the drafter proposes at most that many nodes; the pending token and the tree are verified in
the step's forward; verify_tree.py decides the path; the cache keeps that path's keys and
values (moved, not recomputed). The policy observes the step's budget, verified nodes,
accepted path length and times.
"""

from __future__ import annotations

import torch

from specdec.control.policy import TreePolicy
from specdec.drafters.tree import DraftTree, TreeDrafter
from specdec.language_model import LanguageModel
from specdec.runtime.device import StepClock
from specdec.runtime.rows import Rows
from specdec.runtime.tree_attention import is_chain, tree_depths
from specdec.sampling import SamplingParams, adjusted_probs, token_logprobs
from specdec.sequence import Sequence, StepEvent
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


# --- one sequence's part of a tree step (batch_trees.py runs the step for all rows)


def propose_tree(seq: Sequence, budget: int) -> DraftTree:
    """The sequence's drafter's tree of at most `budget` nodes, as deep (nothing when the
    drafter fails: a broken drafter costs speed, never correctness)."""
    drafter = seq.drafter
    if budget <= 0 or drafter is None:
        return DraftTree.empty()
    assert isinstance(drafter, TreeDrafter)
    policy = seq.policy
    depth = min(policy.depth_cap(budget), budget) if isinstance(policy, TreePolicy) else budget
    try:
        tree = drafter.propose_tree(seq.context, budget, depth, seq.params, seq.generator)
    except Exception as error:
        seq.drafter_failed(error)
        return DraftTree.empty()
    if tree.size > budget:  # the first nodes keep their parents (parents come first)
        tree = DraftTree(tree.tokens[:, :budget], tree.parents[:budget],
                         None if tree.probs is None else tree.probs[:, :budget],
                         tree.forwards, tree.score)
    seq.count_drafter_forwards(tree.forwards)
    return tree


def tree_block(seq: Sequence, tree: DraftTree) -> tuple[torch.Tensor, list[int]]:
    """What the target verifies: node 0 is the pending token (the context's last, not yet
    cached), the tree's nodes follow; tokens [1, N + 1] and parents (checked: ValueError)."""
    parents = [-1] + [p + 1 for p in tree.parents]
    tree_depths(parents)  # a malformed tree is refused before it reaches a forward
    if tree.tokens.shape != (1, tree.size):
        raise ValueError(f"a tree of {tree.size} nodes with tokens {tuple(tree.tokens.shape)}")
    return torch.cat([torch.tensor([[seq.pending]]), tree.tokens.cpu()], dim=1), parents


def judge_tree(seq: Sequence, tree: DraftTree, tokens: torch.Tensor, parents: list[int],
               logits: torch.Tensor, clock: StepClock, drafter_marks: tuple,
               target_marks: tuple, budget: int) -> tuple[StepEvent, list[int]]:
    """Verify the tree against its logits [1, N + 1, V] by the sequence's rule; returns the
    step's event (not yet cut by `advance`) and the nodes the cache keeps (root first)."""
    if seq.grammar is not None:  # each node's p masked by the grammar along its root path
        logits, forced = _mask_tree(seq, tokens[0].tolist(), parents, logits)
    verdict = _verify(seq, tokens[0], parents, logits, tree.probs)
    path = verdict.path(0)
    forced_at = [] if seq.grammar is None else [forced[i] for i in [0, *path]]
    event = _event(seq, tree, parents, path, int(verdict.next_token[0]), logits, clock,
                   drafter_marks, target_marks, budget, forced_at)
    return event, [0, *path]


def _mask_tree(seq: Sequence, tokens: list[int], parents: list[int],
               logits: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
    """logits [1, N + 1, V] masked node by node (after no penalties: tree rows have none,
    before the filters, as a line's); and which nodes' masks allowed one token only."""
    masks = seq.tree_masks(tokens, parents)
    masked = logits.float().masked_fill(~masks.to(logits.device)[None], float("-inf"))
    return masked, (masks.sum(dim=-1) == 1).tolist()


def _verify(seq: Sequence, tokens: torch.Tensor, parents: list[int], logits: torch.Tensor,
            draft_probs: torch.Tensor | None) -> TreeVerdict:
    """The tree's verdict by the request's rule (seq.rule, the one its lines use too)."""
    rule, device = seq.rule, logits.device
    shape = TreeShape.of(tokens, parents, device)
    if rule.name == "greedy":
        return verify_tree_greedy(shape, logits)
    probs = adjusted_probs(logits, seq.params)
    start = seq.context.shape[1]  # the position of the token the root decides
    if rule.name == "coupled":
        return verify_tree_coupled(shape, parents, probs, rule.key, start)
    if draft_probs is not None:  # sampled candidates: q per node, the root's row unused
        draft_probs = draft_probs.to(device)
        draft_probs = torch.cat([torch.zeros_like(draft_probs[:, :1]), draft_probs], 1)
    return verify_tree(shape, draft_probs, probs, [rule.key], start)


def _event(seq: Sequence, tree: DraftTree, parents: list[int], path: list[int],
           next_token: int, logits: torch.Tensor, clock: StepClock, drafter_marks: tuple,
           target_marks: tuple, budget: int, forced_at: list[bool]) -> StepEvent:
    """The step's event, its statistics recorded by the sequence (before `advance` cuts it
    at stop tokens)."""
    tokens = [seq.pending, *tree.tokens[0].tolist()]
    accepted = [tokens[node] for node in path]
    last = path[-1] if path else 0
    tested = [i for i, parent in enumerate(parents) if parent == last]  # all rejected
    depth = max(tree_depths(tree.parents), default=-1) + 1
    n = len(path)
    betas = [1.0] * n + ([0.0] if tested else [])  # what happened, as greedy counts it
    seq.record(tree.size, n, betas, clock.seconds(*drafter_marks),
               clock.seconds(*target_marks), tree.forwards, forced_at,
               None if is_chain(parents) else depth, budget)
    event = StepEvent(accepted=accepted, rejected=[tokens[i] for i in tested],
                      next_token=next_token, bonus=not tested)
    if seq.params.logprobs is not None:  # the verify forward's logits: no extra forward
        event.logprobs = token_logprobs(logits[0, [0, *path]], event.tokens,
                                        seq.params.logprobs)
    return event
