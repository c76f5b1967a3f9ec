"""Prompt lookup first, a model drafter when the lookup finds nothing.

Copying from the context costs nothing and is often right for long spans (code edits, quotes,
summaries); the model drafter covers the rest. Each step's proposal comes from one of the two,
with that drafter's q (None for the n-gram's one-hot), so verification stays exact.
"""

from __future__ import annotations

import torch

from specdec.drafters.base import Drafter, Proposal
from specdec.sampling import SamplingParams, TokenHistory


class CombinedDrafter:
    def __init__(self, lookup: Drafter, fallback: Drafter):
        self.lookup = lookup
        self.fallback = fallback
        self.name = f"{lookup.name}+{fallback.name}"
        self.lookup_steps = 0  # steps served by the lookup, for reports
        self.fallback_steps = 0

    def begin(self, prompt_ids: torch.Tensor) -> None:
        self.lookup.begin(prompt_ids)
        self.fallback.begin(prompt_ids)
        self.lookup_steps = self.fallback_steps = 0

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None) -> Proposal:
        extra = {} if history is None else {"history": history}
        proposal = self.lookup.propose(context, gamma, params, generator, **extra)
        if proposal.length > 0:
            self.lookup_steps += 1
            return proposal
        self.fallback_steps += 1
        # the fallback re-syncs its cache with the whole context itself, however long it skipped
        return self.fallback.propose(context, gamma, params, generator, **extra)
