"""The step loop for tree drafts (batch 1): one target forward verifies a whole tree.

Used by SpeculativeDecoder.stream when the drafter proposes trees (drafters/tree.py), the
target verifies them (`verifies_trees`: the static runner) and the request has no penalties
(their per-node histories are not implemented). Everything else, and batched decoding
(batch.py, the server), verifies lines: a tree drafter's `propose` gives its main line there.

Per step: the policy's gamma is the node budget (within the request's max_draft_tokens); a
TreePolicy (`auto`: control/budget.py) also caps the depth, else the budget is the depth cap;
the drafter proposes at most that many nodes; the pending token and the tree go through ONE
`extend_tree` (a line through `extend`, compiled widths included); verify_tree.py decides the
path; the runner keeps that path's keys and values (`accept_path`: moved, not recomputed). The
policy observes the step's budget, verified nodes, accepted path length and times.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from specdec.control.budget import tree_policy
from specdec.control.policy import GammaPolicy, StepRecord, TreePolicy
from specdec.drafters.tree import DraftTree, TreeDrafter
from specdec.models.base import LanguageModel
from specdec.models.device import StepClock
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


def uses_trees(target: LanguageModel, drafter: object, params: SamplingParams) -> bool:
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
        policy = tree_policy(self.gamma)
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
        budget = seq.wanted_gamma()
        policy = seq.policy
        depth = min(policy.depth_cap(), budget) if isinstance(policy, TreePolicy) else budget
        t0 = clock.mark()
        tree = self._propose(seq, budget, depth)
        t1 = clock.mark()
        # node 0 is the pending token (the context's last, not yet cached)
        parents = [-1] + [p + 1 for p in tree.parents]
        tokens = torch.cat([torch.tensor([[seq.pending]]), tree.tokens], dim=1)
        line = is_chain(parents)
        target = self.target
        logits = target.extend(tokens) if line else target.extend_tree(tokens, parents)
        t2 = clock.mark()
        verdict = self._verify(seq, tokens[0], parents, logits, tree.probs)
        path = verdict.path(0)
        next_token = int(verdict.next_token[0])
        if line:
            target.rollback(tree.size - len(path))
        else:
            target.accept_path([0, *path])
        event = self._event(seq, tree, parents, path, next_token, logits, (t0, t1), (t1, t2),
                            budget)
        event = seq.advance(event)
        if seq.finished:
            self.sequences.clear()
        return [(seq, event)]

    def _propose(self, seq: Sequence, budget: int, depth: int) -> DraftTree:
        if budget <= 0:
            return DraftTree.empty()
        try:
            tree = self.drafter.propose_tree(seq.context, budget, depth, seq.params,
                                             seq.generator)
        except Exception as error:  # a broken drafter costs speed, never correctness
            warnings.warn(f"drafter {self.drafter.name!r} failed ({error!r}); decoding this "
                          "step without drafts", RuntimeWarning, stacklevel=3)
            seq.stats.drafter_failures += 1
            return DraftTree.empty()
        if tree.size > budget:  # the first nodes keep their parents (parents come first)
            tree = DraftTree(tree.tokens[:, :budget], tree.parents[:budget],
                             None if tree.probs is None else tree.probs[:, :budget],
                             tree.forwards, tree.score)
        seq.stats.drafter_calls += tree.forwards
        return tree

    def _verify(self, seq: Sequence, tokens: torch.Tensor, parents: list[int],
                logits: torch.Tensor, draft_probs: torch.Tensor | None) -> TreeVerdict:
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

    def _event(self, seq: Sequence, tree: DraftTree, parents: list[int], path: list[int],
               next_token: int, logits: torch.Tensor, drafter_marks: tuple,
               target_marks: tuple, budget: int) -> StepEvent:
        """The step's event and statistics (before `advance` cuts it at stop tokens)."""
        clock, stats = self.clock, seq.stats
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
        seq.policy.observe(StepRecord(drafted=tree.size, accepted=n, betas=betas,
                                      drafter_s=drafter_s, drafter_forwards=tree.forwards,
                                      target_s=target_s, budget=budget))
        event = StepEvent(accepted=accepted, rejected=[tokens[i] for i in tested],
                          next_token=next_token, bonus=not tested)
        if seq.params.logprobs is not None:  # the verify forward's logits: no extra forward
            event.logprobs = token_logprobs(logits[0, [0, *path]], event.tokens,
                                            seq.params.logprobs)
        return event
