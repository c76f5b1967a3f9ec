"""The decoding loop over rows: sequences join and leave between steps (continuous batching).

Each step (step.py) every active sequence drafts its own block, a line of gamma_i drafts or a
tree of gamma_i nodes; ONE target forward scores all of them; every row is verified by its
own rule and randomness and keeps its accepted path; a finished sequence leaves without
disturbing the others. A drafter with rows (`Drafter.batched`) drafts every row in one
forward per draft position; others draft row by row. Batch 1 (SpeculativeDecoder.stream) is
this loop with one row. This module keeps the rows (join, prefill, leave), decides each
row's draft budget and lets the batch's gamma policy see every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from specdec.control.batch import BatchGammaController
from specdec.control.budget import tree_policy
from specdec.control.policy import FixedGamma, GammaPolicy
from specdec.drafters.base import Drafter
from specdec.noise import resolve_seed
from specdec.row_failure import RowFailure, guarded
from specdec.runtime.device import StepClock
from specdec.runtime.rows import Joining, Rows
from specdec.sampling import SamplingParams
from specdec.sequence import Sequence, StepEvent
from specdec.step import run_step
from specdec.tree_decoding import uses_trees

if TYPE_CHECKING:  # specdec.grammar imports llguidance: only requests with a constraint do
    from specdec.grammar import GrammarCompiler

# cache positions a step may write past the output: the pending token, up to 64 drafts and
# the padding of a compiled width (a hint; runners grow when it is exceeded)
DRAFT_RESERVE = 80


class BatchDecoder:
    """Step-level decoding of up to rows.max_rows sequences on one target.

    drafter: the prototype drafter; each further concurrent sequence drafts with a fork of it
    (`fork()`: same weights and tables, its own state). gamma: an int (fixed) or a factory of
    GammaPolicy; with a policy and several rows, BatchGammaController caps every row's drafts
    to the width that maximizes the batch's throughput. grammars: compiles the constraints of
    requests that have one (SamplingParams.constraint), each row getting its own matcher.
    """

    def __init__(self, rows: Rows, drafter: Drafter | None,
                 gamma: int | Callable[[], GammaPolicy], eos_ids: frozenset[int],
                 vocab_size: int, batch_policy: BatchGammaController | None = None,
                 grammars: GrammarCompiler | None = None):
        self.rows = rows
        self.grammars = grammars
        self.gamma = gamma
        self.eos_ids = eos_ids
        self.vocab_size = vocab_size
        self.clock = StepClock(rows.device)
        self.sequences: list[Sequence] = []  # in row order
        self.batch_policy = batch_policy or BatchGammaController()
        self._drafters: list[Drafter] = [] if drafter is None else [drafter]  # free ones
        self._prototype = drafter
        # a drafter that drafts every row in one forward per position, in the rows' order
        self._row_drafter = None if drafter is None or rows.max_rows == 1 else \
            drafter.batched(rows.max_rows)

    def add(self, prompt_ids: torch.Tensor, params: SamplingParams) -> Sequence:
        """Prefill a new sequence (params already validated); it joins at the next step."""
        return self.add_many([(prompt_ids, params)])[0]

    def add_many(self, requests: list[tuple[torch.Tensor, SamplingParams]]) -> list[Sequence]:
        """Prefill several new sequences together (one padded forward on a static runner)."""
        if not requests:
            return []
        start = time.perf_counter()
        t0 = self.clock.mark()
        reserve = max(p.max_new_tokens for _, p in requests) + DRAFT_RESERVE
        contexts = self.rows.add_many([ids for ids, _ in requests], reserve=reserve)
        first = self.rows.count - len(requests)
        return self._attach(requests, contexts, first, start, t0)

    def begin(self, prompt_ids: torch.Tensor, params: SamplingParams) -> Joining:
        """Start a sequence whose prompt is prefilled in pieces (`prefill`) between steps,
        so the running sequences keep streaming; `join` it once prefilled."""
        return self.rows.start(prompt_ids, reserve=params.max_new_tokens + DRAFT_RESERVE)

    def prefill(self, joining: Joining, tokens: int | None) -> int:
        """Prefill up to `tokens` more prompt positions (None: the rest); returns how many."""
        return self.rows.prefill(joining, tokens)

    def join(self, joining: Joining, params: SamplingParams) -> Sequence:
        """The prefilled sequence joins at the next step (all or nothing on a failure)."""
        start = time.perf_counter()
        t0 = self.clock.mark()
        try:
            context = self.rows.join(joining)
        except BaseException:
            self.rows.abandon(joining)
            raise
        return self._attach([(joining.prompt_ids, params)], [context], self.rows.count - 1,
                            start, t0)[0]

    def abandon(self, joining: Joining) -> None:
        """Drop a sequence that began but will not join."""
        self.rows.abandon(joining)

    def fits(self, prompt_length: int, params: SamplingParams) -> bool:
        """Whether a request fits beside the running ones now (rows and cache budget)."""
        return self.rows.fits(prompt_length, self.reach(prompt_length, params))

    def alone_bytes(self, prompt_length: int, params: SamplingParams) -> int:
        """KV cache bytes the request takes alone at its worst case (its row and its
        prefill's own cache): past the budget it can never run."""
        return (self.rows.cache_bytes(1, self.reach(prompt_length, params))
                + self.rows.cache_bytes(1, prompt_length))

    @staticmethod
    def reach(prompt_length: int, params: SamplingParams) -> int:
        """Cached positions a request may reach: prompt, output and drafts."""
        return prompt_length + params.max_new_tokens + DRAFT_RESERVE

    def _attach(self, requests: list[tuple[torch.Tensor, SamplingParams]],
                contexts: list[torch.Tensor], first: int, start: float,
                t0: Any) -> list[Sequence]:
        """Drafters and sequences of rows first.. just prefilled; all or nothing: a failure
        leaves no row, drafter or sequence taken."""
        clock = self.clock
        t1 = clock.mark()
        drafters: list[Drafter | None] = []
        added = []
        try:
            for ids, params in requests:
                drafters.append(self._take_drafter())
                if drafters[-1] is not None:
                    drafters[-1].begin(ids)
                elif self._row_drafter is not None:
                    self._row_drafter.add(ids, reserve=params.max_new_tokens + DRAFT_RESERVE)
            t2 = clock.mark()
            for (ids, params), context, drafter in zip(requests, contexts, drafters,
                                                       strict=True):
                added.append(self._sequence(ids, context, params, drafter, start))
        except BaseException:
            for index in reversed(range(first, self.rows.count)):
                self.rows.remove(index)
            if self._row_drafter is not None:
                for index in reversed(range(first, self._row_drafter.count)):
                    self._row_drafter.remove(index)
            self._drafters.extend(d for d in drafters if d is not None)
            raise
        for sequence in added:
            stats = sequence.stats
            stats.target_s += clock.seconds(t0, t1)
            stats.drafter_s += clock.seconds(t1, t2)
            stats.prefill_s = clock.seconds(t0, t2)  # device time: a GPU prefill is queued
        self.sequences.extend(added)
        return added

    def _sequence(self, ids: torch.Tensor, context: torch.Tensor, params: SamplingParams,
                  drafter: Drafter | None, start: float) -> Sequence:
        params = resolve_seed(params)  # the coupled rule without a seed needs one noise
        trees = uses_trees(self.rows, drafter, params)  # decided once for the request
        # a tree row gets the tree policy (`auto`: the node-budget controller)
        policy = tree_policy(self.gamma) if trees else \
            FixedGamma(self.gamma) if isinstance(self.gamma, int) else self.gamma()
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else
                                                 set(self.eos_ids))
        grammar = None
        if params.constraint is not None:
            if self.grammars is None:
                raise ValueError("a constrained request needs the target's tokenizer")
            grammar = self.grammars.matcher(params.constraint, stop_ids)
        return Sequence(ids, context, params, drafter, policy, stop_ids, self.rows.device,
                        self.vocab_size, start,
                        None if self._row_drafter is None else self._row_drafter.name, trees,
                        grammar)

    def remove(self, sequence: Sequence) -> None:
        """Drop a sequence (finished or cancelled); the last row takes its place."""
        index = self.sequences.index(sequence)
        self.rows.remove(index)
        if self._row_drafter is not None:
            self._row_drafter.remove(index)
        last = self.sequences.pop()
        if index < len(self.sequences):
            self.sequences[index] = last
        if sequence.drafter is not None:
            self._drafters.append(sequence.drafter)

    def step(self) -> list[tuple[Sequence, StepEvent | RowFailure]]:
        """One step for every active sequence; finished ones leave the batch afterwards.

        A row whose own work (drafting, verification, output) raises leaves alone with a
        RowFailure; the others go on exactly as without it. An error of the target's forward
        is the whole batch's and propagates (its caches are suspect).
        """
        sequences = list(self.sequences)
        if not sequences:
            return []
        started = time.perf_counter()
        outcome = run_step(self.rows, self.clock, sequences, self.gammas(sequences),
                           self._row_drafter)
        self._observe(sequences, outcome.width, outcome.forward_marks, outcome.drafted)
        return self._conclude(sequences, outcome.events, outcome.failures, outcome.width > 1,
                              started)

    def _observe(self, sequences: list[Sequence], width: int, marks: tuple[Any, Any],
                 drafted: int) -> None:
        """The batch policy sees the step's forward: its cost and what the rows drafted."""
        self.batch_policy.observe(len(sequences) * width, self.clock.seconds(*marks), drafted,
                                  sum(s.last_drafter_s for s in sequences),
                                  sum(s.last_betas for s in sequences),
                                  sum(s.last_beta_count for s in sequences))

    def _conclude(self, sequences: list[Sequence], events: list[StepEvent | None],
                 failures: dict[int, Exception], drafted: bool,
                 started: float) -> list[tuple[Sequence, StepEvent | RowFailure]]:
        """The end of a step: each row's event cut and appended (`advance`); failed and
        finished rows leave; the batch policy sees the step (drafted: any drafts in it)."""
        out: list[tuple[Sequence, StepEvent | RowFailure]] = []
        for i, (seq, event) in enumerate(zip(sequences, events, strict=True)):
            if event is not None:
                event = guarded(failures, i, seq.advance, event)
            if i in failures:
                out.append((seq, RowFailure(failures[i])))
                self.remove(seq)
                continue
            assert event is not None
            out.append((seq, event))
            if seq.finished:
                self.remove(seq)
        self.batch_policy.observe_step(len(sequences), drafted,
                                       sum(len(e.tokens) for _, e in out
                                           if isinstance(e, StepEvent)),
                                       time.perf_counter() - started)
        return out

    def gammas(self, sequences: list[Sequence]) -> list[int]:
        """Each row's draft budget this step (its own policy's, or the batch policy's)."""
        if len(sequences) == 1 or isinstance(self.gamma, int):
            # fixed gamma, or alone: the row's own policy decides
            return [seq.wanted_gamma() for seq in sequences]
        # a row's own acceptance, shrunk toward the batch's while it has little of its own
        alphas = [self.batch_policy.row_alpha(seq.stats.beta_sum, seq.stats.beta_count)
                  for seq in sequences]
        # rows cap at what they may still emit and at their own max_draft_tokens; the batch
        # policy chooses the common width
        room = [seq.draft_room for seq in sequences]
        width = self.batch_policy.choose(alphas, room)
        return [min(width, r) for r in room]

    def _take_drafter(self) -> Drafter | None:
        if self._row_drafter is not None:
            return None  # it drafts for every row
        if self._drafters:
            return self._drafters.pop()
        if self._prototype is None:
            return None
        return self._prototype.fork()  # ValueError when it cannot


def forks(drafter: Any) -> bool:
    """Whether `drafter` can serve several concurrent sequences (tries a fork)."""
    if drafter is None:
        return True
    try:
        drafter.fork()
    except ValueError:
        return False
    return True
