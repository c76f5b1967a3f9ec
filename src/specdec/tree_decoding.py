"""The step loop for tree drafts (batch 1): one target forward verifies a whole tree.

Used by SpeculativeDecoder.stream when the drafter proposes trees (drafters/tree.py), the
target verifies them (`verifies_trees`: the static runner) and the request has no penalties
(their per-node histories are not implemented); everything else verifies lines (a tree
drafter's `propose` gives its main line). Batched decoding (batch.py, the server) verifies
each such row's tree in its shared forward (batch_trees.py) with this module's per-sequence
functions: `propose_tree`, `tree_block`, `judge_tree`.

Per step: the policy's gamma is the node budget (and depth cap); the drafter proposes at
most that many nodes; the pending token and the tree go through ONE `extend_tree` (a line
through `extend`, compiled widths included); verify_tree.py decides the path; the runner keeps
that path's keys and values (`accept_path`: moved, not recomputed). The policy observes the
step as a line of `nodes` drafts of which the path was accepted, so the controller's measured
cost per width is the cost of verifying that many nodes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from specdec.control.policy import FixedGamma, GammaPolicy, StepRecord
from specdec.drafters.tree import DraftTree, TreeDrafter
from specdec.models.base import LanguageModel
from specdec.models.device import StepClock
from specdec.models.rows import Rows
from specdec.models.tree_attention import is_chain, tree_depths
from specdec.noise import resolve_seed
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


class TreeDecoder:
    """Step-level decoding of one sequence with tree drafts (BatchDecoder's interface)."""

    def __init__(self, target: LanguageModel, drafter: TreeDrafter,
                 gamma: int | Callable[[], GammaPolicy], eos_ids: frozenset[int],
                 vocab_size: int, reserve: int):
        self.target, self.drafter, self.gamma = target, drafter, gamma
        self.eos_ids, self.vocab_size, self.reserve = eos_ids, vocab_size, reserve
        self.clock = StepClock(target.device)
        self.sequences: list[Sequence] = []

    def add(self, prompt_ids: torch.Tensor, params: SamplingParams) -> Sequence:
        if self.sequences:
            raise RuntimeError("tree decoding runs one sequence at a time")
        start = time.perf_counter()
        clock = self.clock
        t0 = clock.mark()
        context = self.target.prefill(prompt_ids, reserve=params.max_new_tokens + self.reserve)
        t1 = clock.mark()
        self.drafter.begin(prompt_ids)
        t2 = clock.mark()
        params = resolve_seed(params)
        policy = FixedGamma(self.gamma) if isinstance(self.gamma, int) else self.gamma()
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else
                                                 set(self.eos_ids))
        sequence = Sequence(prompt_ids, context, params, self.drafter, policy, stop_ids,
                            self.target.device, self.vocab_size, start)
        sequence.stats.target_s += clock.seconds(t0, t1)
        sequence.stats.drafter_s += clock.seconds(t1, t2)
        sequence.stats.prefill_s = clock.seconds(t0, t2)
        self.sequences.append(sequence)
        return sequence

    def step(self) -> list[tuple[Sequence, StepEvent]]:
        if not self.sequences:
            return []
        seq = self.sequences[0]
        clock = self.clock
        t0 = clock.mark()
        tree = propose_tree(seq, seq.wanted_gamma())
        t1 = clock.mark()
        tokens, parents = tree_block(seq, tree)
        line = is_chain(parents)
        target = self.target
        logits = target.extend(tokens) if line else target.extend_tree(tokens, parents)
        t2 = clock.mark()
        event, kept = judge_tree(seq, tree, tokens, parents, logits, clock, (t0, t1), (t1, t2))
        if line:
            target.rollback(len(parents) - len(kept))
        else:
            target.accept_path(kept)
        event = seq.advance(event)
        if seq.finished:
            self.sequences.clear()
        return [(seq, event)]


# --- one sequence's part of a tree step, shared with batched tree steps (batch_trees.py)


def propose_tree(seq: Sequence, budget: int) -> DraftTree:
    """The sequence's drafter's tree of at most `budget` nodes, as deep (nothing when the
    drafter fails: a broken drafter costs speed, never correctness)."""
    drafter = seq.drafter
    if budget <= 0 or drafter is None:
        return DraftTree.empty()
    assert isinstance(drafter, TreeDrafter)
    try:
        tree = drafter.propose_tree(seq.context, budget, budget, seq.params, seq.generator)
    except Exception as error:
        warnings.warn(f"drafter {drafter.name!r} failed ({error!r}); decoding this step "
                      "without drafts", RuntimeWarning, stacklevel=3)
        seq.stats.drafter_failures += 1
        return DraftTree.empty()
    if tree.size > budget:  # the first nodes keep their parents (parents come first)
        tree = DraftTree(tree.tokens[:, :budget], tree.parents[:budget],
                         None if tree.probs is None else tree.probs[:, :budget],
                         tree.forwards, tree.score)
    seq.stats.drafter_calls += tree.forwards
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
               target_marks: tuple) -> tuple[StepEvent, list[int]]:
    """Verify the tree against its logits [1, N + 1, V] by the sequence's rule; returns the
    step's event (not yet cut by `advance`) and the nodes the cache keeps (root first)."""
    verdict = _verify(seq, tokens[0], parents, logits, tree.probs)
    path = verdict.path(0)
    event = _event(seq, tree, parents, path, int(verdict.next_token[0]), logits, clock,
                   drafter_marks, target_marks)
    return event, [0, *path]


def _verify(seq: Sequence, tokens: torch.Tensor, parents: list[int], logits: torch.Tensor,
            draft_probs: torch.Tensor | None) -> TreeVerdict:
    params = seq.params
    device = logits.device
    shape = TreeShape.of(tokens, parents, device)
    if params.greedy:
        return verify_tree_greedy(shape, logits)
    probs = adjusted_probs(logits, params)
    if params.coupled_rule:
        assert params.seed is not None  # resolve_seed gave one
        return verify_tree_coupled(shape, parents, probs, params.seed, seq.context.shape[1])
    if draft_probs is not None:  # sampled candidates: q per node, the root's row unused
        draft_probs = draft_probs.to(device)
        draft_probs = torch.cat([torch.zeros_like(draft_probs[:, :1]), draft_probs], 1)
    return verify_tree(shape, draft_probs, probs, seq.generator)


def _event(seq: Sequence, tree: DraftTree, parents: list[int], path: list[int],
           next_token: int, logits: torch.Tensor, clock: StepClock, drafter_marks: tuple,
           target_marks: tuple) -> StepEvent:
    """The step's event and statistics (before `advance` cuts it at stop tokens)."""
    stats = seq.stats
    tokens = [seq.pending, *tree.tokens[0].tolist()]
    accepted = [tokens[node] for node in path]
    last = path[-1] if path else 0
    tested = [i for i, parent in enumerate(parents) if parent == last]  # all rejected
    depth = max(tree_depths(tree.parents), default=-1) + 1
    n = len(path)
    betas = [1.0] * n + ([0.0] if tested else [])  # what happened, as greedy counts it
    drafter_s, target_s = clock.seconds(*drafter_marks), clock.seconds(*target_marks)
    stats.drafter_s += drafter_s
    stats.target_s += target_s
    if is_chain(parents):
        stats.record_step(tree.size, n, betas)
    else:
        stats.record_tree_step(tree.size, depth, n, betas)
    seq.last_drafter_s = drafter_s
    seq.last_betas, seq.last_beta_count = sum(betas), len(betas)
    seq.policy.observe(StepRecord(drafted=tree.size, accepted=n, betas=betas,
                                  drafter_s=drafter_s, drafter_forwards=tree.forwards,
                                  target_s=target_s))
    event = StepEvent(accepted=accepted, rejected=[tokens[i] for i in tested],
                      next_token=next_token, bonus=not tested)
    if seq.params.logprobs is not None:  # the verify forward's logits: no extra forward
        event.logprobs = token_logprobs(logits[0, [0, *path]], event.tokens,
                                        seq.params.logprobs)
    return event
