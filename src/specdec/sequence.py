"""One sequence being decoded: its drafts, its verification, its output (Algorithm 1's body).

A Sequence owns everything that is per request: sampling parameters, random generator, gamma
policy, drafter, context, penalties history and statistics, and every change to them. The
target forward that verifies its drafts is not here: the step (step.py) runs one forward for
every sequence's `draft` block and hands each its logits; `prepare` turns them into a check,
the step verifies every row's check (line rows in one vectorized call, verify_rows.py; tree
rows each, tree_decoding.py), `judge` takes the verdict and says which block nodes the cache
keeps, `advance` appends the output. The target's cache holds the context minus its last
(pending) token.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from specdec.acceptance import AcceptanceRule
from specdec.control.policy import GammaPolicy, StepRecord, TreePolicy
from specdec.drafters.base import Drafter, DraftRequest, GuidedDrafter, Proposal
from specdec.drafters.tree import DraftTree, TreeDrafter
from specdec.runtime.device import StepClock
from specdec.runtime.tree_attention import is_chain
from specdec.sampling import (
    SamplingParams,
    TokenHistory,
    TokenLogprob,
    adjusted_probs,
    make_generator,
    one_hot,
    penalize,
    token_logprobs,
)
from specdec.stats import GenerationStats
from specdec.tree_decoding import TreeCheck, propose_tree, tree_block, tree_outcome
from specdec.verify_rows import RowCheck, RowResult
from specdec.verify_tree import TreeVerdict

if TYPE_CHECKING:  # specdec.grammar imports llguidance: only requests with a constraint do
    from specdec.grammar import GrammarMatcher

MAX_FORCED = 32  # forced tokens drafted per step on top of the drafter's own


@dataclass
class StepEvent:
    """One target call: what a UI needs to draw the paper's Figure 1."""

    accepted: list[int]  # draft tokens kept
    rejected: list[int]  # draft tokens thrown away
    next_token: int | None  # correction (after a rejection) or bonus (all accepted); None if cut
    bonus: bool  # True when every draft was accepted and next_token came from p_{k+1}
    finished: bool = False
    finish_reason: str | None = None  # "stop" or "length" once finished
    stats: GenerationStats = field(default_factory=GenerationStats)
    logprobs: list[TokenLogprob] | None = None  # per emitted token, when params.logprobs

    @property
    def tokens(self) -> list[int]:
        """Tokens this step appends to the output."""
        return self.accepted + ([] if self.next_token is None else [self.next_token])


@dataclass
class Block:
    """A row's part of the step's forward: tokens [n] on the target's device, node 0 the
    pending token and the drafts after it, and each node's parent (a line is a chain)."""

    tokens: torch.Tensor
    parents: list[int]

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def is_chain(self) -> bool:
        return is_chain(self.parents)


@dataclass
class _Step:
    """A line step in flight: the proposal and what it cost."""

    proposal: Proposal
    drafts: torch.Tensor  # on the target's device
    drafter_marks: tuple[Any, Any]
    drafter_share: float = 1.0  # of the time between the marks (rows drafted together)
    raw: torch.Tensor | None = None  # the target's logits [1, k + 1, V] (for logprobs)
    counted_betas: bool = False  # betas from what happened, not from p and q
    forced_at: list[bool] = field(default_factory=list)  # a constraint's one-token masks


@dataclass
class _TreeStep:
    """A tree step in flight: the tree, its block (tokens, parents) and what it cost."""

    tree: DraftTree
    tokens: list[int]  # the block's: the pending token, then the tree's nodes
    parents: list[int]
    drafter_marks: tuple[Any, Any]
    budget: int  # the node budget the drafter was given
    logits: torch.Tensor | None = None  # the target's, masked by the constraint
    forced_at: list[bool] = field(default_factory=list)  # per block node


class Sequence:
    """A request's decoding state; `draft` a block, `prepare` the target's logits (verified
    with the step's other rows), `judge` the verdict, then `advance`."""

    def __init__(self, prompt_ids: torch.Tensor, context: torch.Tensor, params: SamplingParams,
                 drafter: Drafter | None, policy: GammaPolicy, stop_ids: set[int],
                 device: torch.device, vocab_size: int, start: float,
                 drafter_name: str | None = None, trees: bool = False,
                 grammar: GrammarMatcher | None = None):
        self.context = context  # decoder context [1, T] on the host; its last token is pending
        self.params = params
        self.drafter = drafter  # None when the loop drafts for every row at once
        self.drafter_name = drafter.name if drafter is not None else drafter_name
        self.trees = trees  # drafts and verifies trees (tree_decoding.py), fixed for the request
        self.grammar = grammar  # the constraint's matcher at the end of the output, or None
        self._forced: list[int] = []  # the step's forced drafts, before the drafter's
        # per token of the step's event: whether the mask forced it (counted by `advance`)
        self.forced_at: list[bool] = []
        self.policy = policy
        self.stop_ids = stop_ids
        self.device = device
        self.generator = make_generator(params.seed, device)
        self.rule = AcceptanceRule.of(params, self.generator)  # lines and trees alike
        self.stats = GenerationStats(prompt_tokens=prompt_ids.shape[1])
        self.start = start
        self.finished = False
        # penalties: tokens seen so far and output counts, on the target's device
        self.history = TokenHistory.of(context.to(device), context.shape[1],
                                       vocab_size) if params.penalized else None
        self._step: _Step | _TreeStep | None = None
        self.last_drafter_s = 0.0  # the last step's drafting time
        self.last_betas, self.last_beta_count = 0.0, 0  # the last step's examined betas

    @property
    def remaining(self) -> int:
        return self.params.max_new_tokens - self.stats.generated

    @property
    def pending(self) -> int:
        return int(self.context[0, -1])

    @property
    def draft_room(self) -> int:
        """Drafts this step may take: never past max_new_tokens (a step emits k + 1), never
        past the request's own max_draft_tokens."""
        cap = self.params.max_draft_tokens
        room = max(self.remaining - 1, 0)
        return room if cap is None else min(room, cap)

    def wanted_gamma(self) -> int:
        """The policy's gamma within the room (draft_room)."""
        return min(self.policy.choose(), self.draft_room)

    def draft(self, k: int, clock: StepClock) -> Block:
        """This step's block: the pending token, then a tree of at most k nodes (a tree row)
        or a line of at most k drafts from this sequence's drafter."""
        if self.trees:
            return self._draft_tree(k, clock)
        t0 = clock.mark()
        proposal: Proposal | Exception = Proposal.empty(1)
        if self.drafter is not None and k > 0:
            request = self.draft_request(k)
            try:
                if request.guide is not None and isinstance(self.drafter, GuidedDrafter):
                    proposal = self.drafter.propose_guided(request)
                elif request.gamma > 0:
                    proposal = self.drafter.propose(request.context, request.gamma,
                                                    request.params, request.generator,
                                                    **_history(request))
            except Exception as error:
                proposal = error
        return self.offer(proposal, k, (t0, clock.mark()))

    def draft_request(self, k: int) -> DraftRequest:
        """What a drafter needs to draft up to k tokens for this sequence. Under a
        constraint the tokens it forces come first (drafted for free, `offer` puts them
        before the drafter's) and the drafter continues after them, its q guided."""
        if self.grammar is None:
            return DraftRequest(self.context, k, self.params, self.generator, self.history)
        t0 = time.perf_counter()
        forced = self.grammar.forced(min(self.draft_room, MAX_FORCED)) if k > 0 else []
        self._forced = forced
        k = min(k, self.draft_room - len(forced))
        context, history = self.context, self.history
        if forced:
            ahead = torch.tensor([forced], dtype=torch.long)
            context = torch.cat([context, ahead], dim=1)
            history = None if history is None else history.plus(ahead.to(self.device))
        guide = self.grammar.guide(forced)
        self.stats.grammar_s += time.perf_counter() - t0
        return DraftRequest(context, k, self.params, self.generator, history, guide)

    def offer(self, proposal: Proposal | Exception, k: int, marks: tuple[Any, Any],
              share: float = 1.0) -> Block:
        """Take the step's line proposal (or its drafter's error), drafted between the
        clock's marks; share: this row's part of that time (drafts for several rows at
        once). Returns the line's block."""
        if isinstance(proposal, Exception):
            self.drafter_failed(proposal)
            proposal = Proposal.empty(1)
        self.count_drafter_forwards(proposal.forwards)
        if self._forced:
            k = max(0, min(k, self.draft_room - len(self._forced)))
        if proposal.length > k:
            proposal = Proposal(proposal.tokens[:, :k],
                                None if proposal.probs is None else proposal.probs[:, :k],
                                proposal.forwards)
        if self._forced:
            proposal = _with_forced(self._forced, proposal)
            self._forced = []
        drafts = proposal.tokens.to(self.device, non_blocking=True)  # moved once
        self._step = _Step(proposal, drafts, marks, share)
        pending = torch.tensor([self.pending]).to(self.device, non_blocking=True)
        return Block(torch.cat([pending, drafts[0]]), list(range(-1, drafts.shape[1])))

    def _draft_tree(self, budget: int, clock: StepClock) -> Block:
        """The drafter's tree within the budget (a TreePolicy also caps its depth); a
        drafter that fails costs this step its drafts, never correctness."""
        t0 = clock.mark()
        tree, policy = DraftTree.empty(), self.policy
        if budget > 0 and isinstance(self.drafter, TreeDrafter):
            depth = min(policy.depth_cap(budget), budget) if isinstance(policy, TreePolicy) \
                else budget
            try:
                tree = propose_tree(self.drafter, self.context, budget, depth, self.params,
                                    self.generator)
            except Exception as error:
                self.drafter_failed(error)
        marks = (t0, clock.mark())
        self.count_drafter_forwards(tree.forwards)
        tokens, parents = tree_block(self.pending, tree)
        self._step = _TreeStep(tree, tokens.tolist(), parents, marks, budget)
        return Block(tokens.to(self.device, non_blocking=True), parents)

    def prepare(self, logits: torch.Tensor) -> RowCheck | TreeCheck:
        """The block's verification inputs against the target's logits [1, n, V] (p after
        each node): penalties, the constraint's mask and filters applied, on the target's
        device. The step verifies every row's check, then `judge`s."""
        step, params = self._step, self.params
        assert step is not None, "prepare() without draft()"
        if isinstance(step, _TreeStep):
            return self._prepare_tree(step, logits)
        drafts = step.drafts
        k = drafts.shape[1]
        step.raw = logits
        if self.history is not None:  # position i sees the history plus drafts x_1..x_{i-1}
            logits = penalize(logits, params, self.history, drafts)
        if self.grammar is not None:  # then the mask along the drafts, then the filters
            logits = self._mask(logits, drafts[0].tolist(), step)
        target_probs = adjusted_probs(logits, params)  # greedy: one-hot at the argmax
        q = None if params.greedy or step.proposal.probs is None else \
            step.proposal.probs.to(self.device)
        if q is not None and q.shape != target_probs[:, :k].shape:
            raise ValueError(f"drafter {self.drafter_name!r} gave q of shape "
                             f"{tuple(q.shape)} for {k} drafts over {target_probs.shape[-1]} "
                             "tokens")
        # one-hot p and q (greedy), or a coupled draft with a q, whose p(x) is not its
        # acceptance chance: count what happened, beta 1 where the draft was kept
        step.counted_betas = self.rule.counts_betas(q is not None)
        return RowCheck(drafts[0], None if q is None else q[0], target_probs[0], self.rule,
                        self.context.shape[1])  # start: the first emitted position

    def _prepare_tree(self, step: _TreeStep, logits: torch.Tensor) -> TreeCheck:
        """A tree's check: each node's p masked by the constraint along its root path
        (trees have no penalties), before the filters as a line's."""
        if self.grammar is not None:
            t0 = time.perf_counter()
            masks = self.grammar.tree_masks(step.tokens, step.parents)
            self.stats.grammar_s += time.perf_counter() - t0
            step.forced_at = (masks.sum(dim=-1) == 1).tolist()
            logits = logits.float().masked_fill(~masks.to(logits.device)[None], float("-inf"))
        step.logits = logits
        return TreeCheck(torch.tensor(step.tokens), step.parents, logits, step.tree.probs,
                         self.rule, self.params, self.context.shape[1])

    def _mask(self, logits: torch.Tensor, drafts: list[int], step: _Step) -> torch.Tensor:
        """logits [1, k + 1, V] masked by the grammar along the drafts (GrammarMatcher.
        masks_along); records which positions it forced."""
        assert self.grammar is not None
        t0 = time.perf_counter()
        masks, _ = self.grammar.masks_along(drafts)
        step.forced_at = (masks.sum(dim=-1) == 1).tolist()
        self.stats.grammar_s += time.perf_counter() - t0
        return logits.float().masked_fill(~masks.to(logits.device)[None], float("-inf"))

    def drafter_failed(self, error: Exception) -> None:
        """A broken drafter costs speed, never correctness: warned, counted, no drafts."""
        warnings.warn(f"drafter {self.drafter_name!r} failed ({error!r}); decoding this "
                      "step without drafts", RuntimeWarning, stacklevel=4)
        self.stats.drafter_failures += 1

    def count_drafter_forwards(self, forwards: int) -> None:
        self.stats.drafter_calls += forwards

    def record(self, drafted: int, accepted: int, betas: list[float], drafter_s: float,
               target_s: float, forwards: int, forced_at: list[bool],
               depth: int | None = None, budget: int | None = None) -> None:
        """A verified step's statistics and what the gamma policy learns from it; lines give
        no depth, trees their depth and node budget. forced_at: per token of the step's
        event, whether the constraint's mask forced it (counted by `advance`)."""
        stats = self.stats
        self.last_drafter_s = drafter_s
        stats.drafter_s += drafter_s
        stats.target_s += target_s
        if depth is None:
            stats.record_step(drafted, accepted, betas)
        else:
            stats.record_tree_step(drafted, depth, accepted, betas)
        self.last_betas, self.last_beta_count = sum(betas), len(betas)
        self.forced_at = forced_at
        self.policy.observe(StepRecord(
            drafted=drafted, accepted=accepted, betas=betas, drafter_s=drafter_s,
            drafter_forwards=forwards, target_s=target_s, budget=budget))

    def judge(self, verdict: RowResult | TreeVerdict, forward_marks: tuple[Any, Any],
              clock: StepClock) -> tuple[StepEvent, list[int]]:
        """The step's event from its verdict (a line's n, next token, drafts and betas, read
        back with every line row's in one host sync; or a tree's path); forward_marks: the
        clock's marks around the target forward. Records statistics and informs the gamma
        policy.

        Returns the step's event (not yet cut at stop tokens: see `advance`) and the block's
        nodes the cache keeps (the root first: a line keeps its accepted prefix).
        """
        step, self._step = self._step, None
        assert step is not None, "judge() without draft()"
        target_s = clock.seconds(*forward_marks)
        if isinstance(step, _TreeStep):
            assert isinstance(verdict, TreeVerdict)
            return self._judge_tree(step, verdict, clock.seconds(*step.drafter_marks), target_s)
        assert not isinstance(verdict, TreeVerdict)
        n, next_token, draft_list, beta_list = verdict
        k = len(draft_list)
        if step.counted_betas:
            beta_list = [1.0] * n + [0.0] * (k - n)
        drafter_s = clock.seconds(*step.drafter_marks) * step.drafter_share
        self.record(k, n, beta_list[: min(n + 1, k)], drafter_s, target_s,
                    step.proposal.forwards, step.forced_at[: n + 1])
        event = StepEvent(accepted=draft_list[:n], rejected=draft_list[n:],
                          next_token=next_token, bonus=n == k)
        if self.params.logprobs is not None:  # the verify forward's logits: no extra forward
            assert step.raw is not None
            event.logprobs = token_logprobs(step.raw[0, : n + 1], event.tokens,
                                            self.params.logprobs)
        return event, list(range(n + 1))

    def _judge_tree(self, step: _TreeStep, verdict: TreeVerdict, drafter_s: float,
                    target_s: float) -> tuple[StepEvent, list[int]]:
        """A tree step's event and kept nodes; its betas count what happened (1 per
        accepted node, 0 where every child of the last was rejected)."""
        path = verdict.path(0)
        kept = [0, *path]
        outcome = tree_outcome(step.tokens, step.parents, path)
        forced_at = [step.forced_at[node] for node in kept] if step.forced_at else []
        self.record(step.tree.size, len(path), outcome.betas,
                    drafter_s, target_s, step.tree.forwards,
                    forced_at, outcome.depth, step.budget)
        event = StepEvent(accepted=outcome.accepted, rejected=outcome.rejected,
                          next_token=int(verdict.next_token[0]), bonus=not outcome.rejected)
        if self.params.logprobs is not None:  # the verify forward's logits: no extra forward
            assert step.logits is not None
            event.logprobs = token_logprobs(step.logits[0, kept], event.tokens,
                                            self.params.logprobs)
        return event, kept

    def advance(self, event: StepEvent) -> StepEvent:
        """Cut the event at a stop token or max_new_tokens, append it to the output."""
        stats = self.stats
        emitted = event.tokens
        cut = _cut(emitted, self.stop_ids, self.remaining)
        complete = False
        if self.grammar is not None:  # the output ends where the grammar completes
            t0 = time.perf_counter()
            keep, complete = self.grammar.accept_output(emitted if cut is None else
                                                        emitted[:cut])
            stats.grammar_s += time.perf_counter() - t0
            if keep < len(emitted):
                cut = keep
        if cut is not None:
            emitted = emitted[:cut]
            event.accepted = event.accepted[:cut]
            event.next_token = emitted[-1] if len(emitted) > len(event.accepted) else None
            if event.logprobs is not None:
                event.logprobs = event.logprobs[:cut]
        stats.generated += len(emitted)
        stats.forced_tokens += sum(self.forced_at[: len(emitted)])
        self.forced_at = []
        self.context = torch.cat([self.context, torch.tensor([emitted], dtype=torch.long)],
                                 dim=1)
        if self.history is not None:
            self.history = self.history.plus(self.context[:, -len(emitted):].to(self.device))
        if cut is not None or complete or stats.generated >= self.params.max_new_tokens:
            event.finished = self.finished = True
            stopped = complete or bool(emitted) and emitted[-1] in self.stop_ids
            event.finish_reason = "stop" if stopped else "length"
        stats.total_s = time.perf_counter() - self.start
        stats.first_token_s = stats.first_token_s or stats.total_s
        event.stats = stats
        return event


def _with_forced(forced: list[int], proposal: Proposal) -> Proposal:
    """The forced tokens, then the drafter's proposal (deterministic: q one-hot)."""
    ahead = torch.tensor([forced], dtype=torch.long)
    tokens = torch.cat([ahead, proposal.tokens.cpu()], dim=1)
    probs = proposal.probs
    if probs is not None:
        probs = torch.cat([one_hot(ahead.to(probs.device), probs.shape[-1]), probs], dim=1)
    return Proposal(tokens, probs, proposal.forwards)


def _history(request: DraftRequest) -> dict[str, Any]:
    """The history only when penalties need it: drafters written without it still work."""
    return {} if request.history is None else {"history": request.history}


def _cut(tokens: list[int], stop_ids: set[int], remaining: int) -> int | None:
    """Length to keep: through the first stop token, at most `remaining`; None if all stay."""
    for i, token in enumerate(tokens[:remaining]):
        if token in stop_ids:
            return i + 1
    return remaining if len(tokens) > remaining else None
