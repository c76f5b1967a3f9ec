"""One decoding step for every row: draft, verify in ONE target forward, accept, roll back.

Algorithm 1's body for a batch of rows (batch.py keeps the rows; SpeculativeDecoder.stream
is one row). Each row's block is its pending token (the context's last, not yet cached) and
its drafts, with each node's parent: a line is a chain, a tree row's drafter gives a tree
(Sequence.draft). The blocks, padded to one width, are scored in one target forward
(Rows.extend when every block is a chain, Rows.extend_tree otherwise: a chain's logits are
the same bits either way). Each row prepares its check (penalties, the constraint's mask,
the filters: Sequence.prepare); line rows are verified in one vectorized call read back in
one host sync (verify_rows.py), tree rows each by their walk (verify_tree.py), both by the
request's one rule. Each row judges its verdict (Sequence.judge: statistics, its gamma
policy) and the cache keeps every row's accepted path: a line's is a prefix (a rollback),
a tree's moves its nodes' keys and values once. A row whose own work raises (drafting,
verification, output) fails alone (RowFailure); an error of the forward is the batch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from specdec.drafters.base import Proposal, RowDrafter
from specdec.row_failure import guarded
from specdec.runtime.device import StepClock
from specdec.runtime.rows import Rows
from specdec.sequence import Block, Sequence, StepEvent
from specdec.tree_decoding import TreeCheck
from specdec.verify_rows import RowCheck, RowResult, verify_checks
from specdec.verify_tree import TreeVerdict

_NOTHING = Block(torch.zeros(1, dtype=torch.long), [-1])  # a row that failed to draft


@dataclass
class StepOutcome:
    """What the step did, for the loop to conclude it: each row's event (None where the row
    failed; `failures` says why), the block's width, the nodes drafted and the clock's marks
    around the forward."""

    events: list[StepEvent | None]
    failures: dict[int, Exception]
    width: int
    drafted: int
    forward_marks: tuple[Any, Any]


def run_step(rows: Rows, clock: StepClock, sequences: list[Sequence], budgets: list[int],
             row_drafter: RowDrafter | None = None) -> StepOutcome:
    """One step for `sequences` (the rows' sequences, in order) with these draft budgets;
    row_drafter: drafts every row at once instead of each sequence's own drafter."""
    failures: dict[int, Exception] = {}
    if row_drafter is None:
        drafted = [guarded(failures, i, seq.draft, k, clock)
                   for i, (seq, k) in enumerate(zip(sequences, budgets, strict=True))]
    else:
        drafted = _draft_rows(row_drafter, clock, sequences, budgets, failures)
    blocks: list[Block] = [_NOTHING if b is None else b for b in drafted]
    width = max(b.size for b in blocks)
    tokens = torch.zeros(len(blocks), width, dtype=torch.long, device=rows.device)
    for i, b in enumerate(blocks):
        tokens[i, : b.size] = b.tokens
    line = all(b.is_chain for b in blocks)
    t0 = clock.mark()
    logits = rows.extend(tokens) if line else \
        rows.extend_tree(tokens, [b.parents for b in blocks])
    marks = (t0, clock.mark())
    checks = [None if i in failures else
              guarded(failures, i, seq.prepare, logits[i:i + 1, : b.size])
              for i, (seq, b) in enumerate(zip(sequences, blocks, strict=True))]
    verdicts = verify(checks, failures)
    judged = [None if v is None else guarded(failures, i, seq.judge, v, marks, clock)
              for i, (seq, v) in enumerate(zip(sequences, verdicts, strict=True))]
    # each row keeps its accepted path (a failed row keeps its root: it leaves afterwards)
    kept = [[0] if j is None else j[1] for j in judged]
    if line:
        rows.rollback([width - len(path) for path in kept])
    else:
        rows.accept_paths(kept)
    return StepOutcome([None if j is None else j[0] for j in judged], failures, width,
                       sum(b.size - 1 for b in blocks), marks)


def verify(checks: list[RowCheck | TreeCheck | None],
           failures: dict[int, Exception]) -> list[RowResult | TreeVerdict | None]:
    """Every checked row's verdict: the line rows in one vectorized call (should it raise,
    each line row alone: a row's verdict does not depend on the others, so only a row whose
    own inputs break it fails), each tree row by its own walk."""
    verdicts: list[RowResult | TreeVerdict | None] = [None] * len(checks)
    lines = [i for i, check in enumerate(checks) if isinstance(check, RowCheck)]
    try:
        results = verify_checks([checks[i] for i in lines])  # type: ignore[misc]
    except Exception:
        results = [guarded(failures, i, _verify_line, checks[i]) for i in lines]
    for i, result in zip(lines, results, strict=True):
        verdicts[i] = result
    for i, check in enumerate(checks):
        if isinstance(check, TreeCheck):
            verdicts[i] = guarded(failures, i, check.verify)
    return verdicts


def _verify_line(check: RowCheck) -> RowResult:
    return verify_checks([check])[0]


def _draft_rows(drafter: RowDrafter, clock: StepClock, sequences: list[Sequence],
                budgets: list[int], failures: dict[int, Exception]) -> list[Block | None]:
    """Every row's line from one drafter call (one forward per draft position); an error of
    that call costs every row its drafts this step, as a row's own drafter's would cost it
    its own."""
    t0 = clock.mark()
    proposals: list[Proposal | Exception]
    try:
        proposals = drafter.propose([seq.draft_request(k) for seq, k in
                                     zip(sequences, budgets, strict=True)])
    except Exception as error:
        proposals = [error] * len(sequences)
    marks, share = (t0, clock.mark()), 1 / len(sequences)
    return [guarded(failures, i, seq.offer, p, k, marks, share)
            for i, (seq, p, k) in enumerate(zip(sequences, proposals, budgets, strict=True))]
