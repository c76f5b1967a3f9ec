"""A batch step with trees: each row verifies its own tree, all rows in ONE target forward.

BatchDecoder.step runs its step here when any row decodes with trees (`Sequence.trees`,
decided by tree_decoding.uses_trees: a tree drafter, rows that verify trees, no penalties).
Each such row proposes its own tree with its own budget (tree_decoding.propose_tree); every
other row proposes its line (Sequence.propose), which goes in as a chain. The blocks (the
pending token, then the nodes) are padded to a common width and verified in one forward:
Rows.extend_tree with each row's parents (Rows.extend when every block is a chain). A tree
row is judged by its own rule (tree_decoding.judge_tree), a line row by the line step's rule
(verify_rows).
Each row's cache keeps its accepted path (Rows.accept_paths: moved once, the rest
forgotten). A row whose own work raises leaves alone (RowFailure); a drafter that raises
costs its row speed only (no drafts that step).

A node's logits are the bits of the line extend of its root path (runtime/tree_attention.py),
and a row's logits do not depend on the rows beside it: a row's tokens are those it gets when
decoded alone (SpeculativeDecoder.stream: this step over one row on the runner's own cache,
StaticCausalLM.extend_tree), for every rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from specdec.drafters.tree import DraftTree
from specdec.row_failure import guarded
from specdec.runtime.device import StepClock
from specdec.runtime.rows import Rows
from specdec.runtime.tree_attention import is_chain
from specdec.sequence import Sequence, StepEvent
from specdec.tree_decoding import judge_tree, propose_tree, tree_block
from specdec.verify_rows import verify_checks


@dataclass
class _RowDraft:
    """A row's block: tokens [1, n] (node 0 the pending token) and their parents; `tree` is
    None for a line row (its proposal stays in its Sequence until `judge`)."""

    tokens: torch.Tensor
    parents: list[int]
    tree: DraftTree | None = None
    drafter_marks: tuple[Any, Any] | None = None
    budget: int = 0  # the node budget the drafter was given


_NOTHING = _RowDraft(torch.zeros(1, 1, dtype=torch.long), [-1])  # a row that failed to draft


@dataclass
class TreeStep:
    """What a tree step did, for the loop to conclude it (BatchDecoder.step): each row's
    event (None where the row failed; `failures` says why), the block's width, the nodes
    drafted and the clock's marks around the forward."""

    events: list[StepEvent | None]
    failures: dict[int, Exception]
    width: int
    drafted: int
    forward_marks: tuple[Any, Any]


def step_trees(rows: Rows, clock: StepClock, sequences: list[Sequence],
               budgets: list[int]) -> TreeStep:
    """Draft, verify in one forward and keep each row's path, for `sequences` (the rows'
    sequences, in order) with these draft budgets; trees where the rows use them."""
    failures: dict[int, Exception] = {}
    drafts = [guarded(failures, i, _draft, seq, budget, clock) or _NOTHING
              for i, (seq, budget) in enumerate(zip(sequences, budgets, strict=True))]
    width = max(len(d.parents) for d in drafts)
    block = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, d in enumerate(drafts):
        block[i, : len(d.parents)] = d.tokens[0]
    line = all(is_chain(d.parents) for d in drafts)
    t0 = clock.mark()
    logits = rows.extend(block) if line else rows.extend_tree(block, [d.parents for d in drafts])
    marks = (t0, clock.mark())
    judged = [None if i in failures else
              guarded(failures, i, _judge, seq, d, logits[i:i + 1, : len(d.parents)], clock,
                      marks)
              for i, (seq, d) in enumerate(zip(sequences, drafts, strict=True))]
    # each row keeps its accepted path (a failed row keeps its root: it leaves below)
    kept = [[0] if j is None else j[1] for j in judged]
    if line:
        rows.rollback([width - len(path) for path in kept])
    else:
        rows.accept_paths(kept)
    return TreeStep([None if j is None else j[0] for j in judged], failures, width,
                    sum(len(d.parents) - 1 for d in drafts), marks)


def _draft(seq: Sequence, budget: int, clock: StepClock) -> _RowDraft:
    """The row's tree (a tree row) or its line as a chain."""
    if not seq.trees:
        line = seq.propose(budget, clock)
        k = line.shape[1]
        return _RowDraft(torch.cat([torch.tensor([[seq.pending]]), line.cpu()], dim=1),
                         list(range(-1, k)))
    t0 = clock.mark()
    tree = propose_tree(seq, budget)
    marks = (t0, clock.mark())
    tokens, parents = tree_block(seq, tree)
    return _RowDraft(tokens, parents, tree, marks, budget)


def _judge(seq: Sequence, draft: _RowDraft, logits: torch.Tensor, clock: StepClock,
           marks: tuple[Any, Any]) -> tuple[StepEvent, list[int]]:
    """The row's event and the nodes its cache keeps (root first)."""
    if draft.tree is None:  # a line row: the line step's rule (verify_rows), one row
        event = seq.judge(verify_checks([seq.prepare(logits)])[0], marks, clock)
        return event, list(range(len(event.accepted) + 1))
    assert draft.drafter_marks is not None
    return judge_tree(seq, draft.tree, draft.tokens, draft.parents, logits, clock,
                      draft.drafter_marks, marks, draft.budget)
