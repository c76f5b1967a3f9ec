"""A model drafter's drafts for several rows at once: one forward per draft position.

The rows live on the drafter model's own static cache (runtime.rows.StaticRows), in the
target's row order: a row joins with `add`, leaves with `remove` (the last row takes its
index, as the target's rows do). Each step, every row is rolled back to the common prefix
of what it cached and its new context (whatever the target accepted or replaced), the tails
go through one padded forward, then each draft position is one forward of every row. Rows
drafting fewer tokens than the longest are fed padding past their drafts; what a row caches
is recorded token for token, so the next step's rollback removes it. Each row samples its
drafts from its own logits with its own parameters and generator (drafters/sample.py), so
its drafts are those the row would draft alone (up to the float rounding of a batched
forward).
"""

from __future__ import annotations

from typing import Protocol

import torch

from specdec.drafters.base import DraftRequest, Proposal
from specdec.drafters.cache_sync import common_prefix
from specdec.drafters.sample import DraftSampler
from specdec.language_model import LanguageModel
from specdec.runtime.rows import StaticRows
from specdec.runtime.static import StaticCausalLM


class RowSource(Protocol):
    """What rows take from the model drafter they batch (drafters.model.ModelDrafter)."""

    name: str
    model: LanguageModel

    def fit(self, ids: torch.Tensor) -> torch.Tensor: ...

    def restrict(self, logits: torch.Tensor) -> torch.Tensor: ...


class ModelRowsDrafter:
    """Rows of a model drafter (ModelDrafter.batched): its weights, ids and logits width."""

    def __init__(self, drafter: RowSource, model: StaticCausalLM, max_rows: int):
        self.name = drafter.name
        self.drafter = drafter  # fits ids and restricts logits as it does alone
        self.rows = StaticRows(model, max_rows)
        self.cached: list[torch.Tensor] = []  # per row, the ids whose keys and values it holds
        self._fed: list[torch.Tensor] = []  # draft blocks [rows, 1] cached, still on device

    @property
    def count(self) -> int:
        return self.rows.count

    def add(self, prompt_ids: torch.Tensor, reserve: int = 0) -> None:
        self._settle()
        prompt = self.drafter.fit(prompt_ids)
        self.rows.add(prompt, reserve=reserve)
        self.cached.append(prompt[:, : self.rows.lengths[-1]])

    def remove(self, index: int) -> None:
        self._settle()
        self.rows.remove(index)
        last = self.cached.pop()
        if index < len(self.cached):
            self.cached[index] = last

    def propose(self, requests: list[DraftRequest]) -> list[Proposal | Exception]:
        if len(requests) != self.count:
            raise ValueError(f"{len(requests)} draft requests for {self.count} rows")
        steps = max((r.gamma for r in requests), default=0)
        if steps <= 0:
            return [Proposal.empty(1) for _ in requests]
        self._settle()  # the last step's drafts: the target's step synchronized since
        contexts = [self.drafter.fit(r.context) for r in requests]
        logits = self._catch_up(contexts)
        samplers: list[DraftSampler | Exception] = [
            DraftSampler(r.params, r.generator, r.history, r.context.shape[1],
                         guide=r.guide)
            for r in requests]
        rows = range(len(requests))
        for position in range(steps):
            choices = []
            for i in rows:
                sampler, gamma = samplers[i], requests[i].gamma
                choice = None
                if isinstance(sampler, DraftSampler) and position < gamma:
                    try:  # a row's own sampling error is its own: it gets no drafts
                        choice = sampler.next(logits[i:i + 1])
                    except Exception as error:
                        samplers[i] = error
                choices.append(torch.zeros(1, dtype=torch.long, device=logits.device)
                               if choice is None else choice)
            if position + 1 < steps:  # the last drafts are never fed
                block = self.drafter.fit(torch.stack(choices))  # [rows, 1]
                logits = self.drafter.restrict(self.rows.extend(block)[:, -1])
                self._fed.append(block)
        return [_proposal(s, r.gamma) for s, r in zip(samplers, requests, strict=True)]

    def _catch_up(self, contexts: list[torch.Tensor]) -> torch.Tensor:
        """Roll every row back to its common prefix with its context and feed the rest in
        one padded forward; the logits [rows, V] after each row's context."""
        keep = [max(min(common_prefix(c, x), x.shape[1] - 1), 0)
                for c, x in zip(self.cached, contexts, strict=True)]
        self._rollback([n - k for n, k in zip(self.rows.lengths, keep, strict=True)])
        tails = [x[0, k:] for x, k in zip(contexts, keep, strict=True)]
        width = max(len(t) for t in tails)
        block = torch.zeros(len(tails), width, dtype=torch.long)
        for i, tail in enumerate(tails):
            block[i, : len(tail)] = tail
        logits = self.rows.extend(block)
        self.cached = [torch.cat([c, block[i:i + 1]], dim=1) for i, c in enumerate(self.cached)]
        ends = torch.tensor([len(t) - 1 for t in tails], device=logits.device)
        last = logits[torch.arange(len(tails), device=logits.device), ends]
        self._rollback([width - len(t) for t in tails])  # the padding
        return self.drafter.restrict(last)

    def _rollback(self, counts: list[int]) -> None:
        self.rows.rollback(counts)
        self.cached = [c[:, :n] for c, n in zip(self.cached, self.rows.lengths, strict=True)]

    def _settle(self) -> None:
        """Record the draft blocks fed at the last step (one copy, after the target's step)."""
        if self._fed:
            fed = torch.cat(self._fed, dim=1).cpu()
            self._fed = []
            self.cached = [torch.cat([c, fed[i:i + 1]], dim=1) for i, c in enumerate(self.cached)]


def model_rows(drafter: RowSource, max_rows: int) -> ModelRowsDrafter | None:
    """Rows for a model drafter on the static runner; None for other runners (row by row)."""
    if not isinstance(drafter.model, StaticCausalLM):
        return None
    return ModelRowsDrafter(drafter, drafter.model, max_rows)


def _proposal(sampler: DraftSampler | Exception, gamma: int) -> Proposal | Exception:
    if isinstance(sampler, Exception):
        return sampler
    if gamma <= 0:
        return Proposal.empty(1)
    tokens, probs = sampler.result()
    return Proposal(tokens, probs, forwards=gamma)
