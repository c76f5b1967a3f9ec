"""A smaller language model with the target's vocabulary as the drafter (M_q in the paper)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from specdec.drafters.base import Drafter, DraftRequest, Proposal, RowDrafter
from specdec.drafters.cache_sync import sync_cache
from specdec.drafters.model_rows import model_rows
from specdec.drafters.sample import sample_drafts
from specdec.language_model import LanguageModel, logits_at_width
from specdec.sampling import SamplingParams, TokenHistory

if TYPE_CHECKING:  # specdec.grammar imports llguidance: only requests with a constraint do
    from specdec.grammar import DraftGuide


class ModelDrafter(Drafter):
    """Samples gamma tokens autoregressively from a model, one forward per token.

    Its cache is kept in step with the target's context by comparing token ids: whatever the
    target accepted or replaced, the drafter rolls back to the common prefix and feeds the
    rest, so no feedback call is needed and a failed step can never desynchronise it.

    vocab_size: the target's logits width, when the drafter shares its tokenizer under a
    different padded width (models.base.check_same_vocabulary): q then has the target's
    width, zero where the drafter has no logit, and drafts are always target ids.
    """

    def __init__(self, model: LanguageModel, vocab_size: int | None = None):
        self.model = model
        self.name = model.name
        self.vocab_size = model.vocab_size if vocab_size is None else vocab_size  # width of q
        # ids at or past this are target padding the drafter cannot embed (None: no such ids)
        self._embeddable = model.vocab_size if self.vocab_size > model.vocab_size else None
        self.cached_ids = torch.zeros(1, 0, dtype=torch.long)
        self._drafts_on_device: torch.Tensor | None = None  # cached, not yet in cached_ids

    def fork(self) -> ModelDrafter:
        """A drafter for another concurrent sequence: same weights, its own cache."""
        return ModelDrafter(self.model.fork(), self.vocab_size)

    def batched(self, max_rows: int) -> RowDrafter | None:
        """Rows of the drafter model's own static cache (drafters/model_rows.py); other
        runners draft row by row."""
        return model_rows(self, max_rows)

    def warmup(self, capacity: int) -> float:
        return self.model.warmup(capacity)

    def begin(self, prompt_ids: torch.Tensor) -> None:
        context = self.model.prefill(self.fit(prompt_ids))
        self.cached_ids = context[:, : self.model.cached_length]
        self._drafts_on_device = None

    def propose_guided(self, request: DraftRequest) -> Proposal:
        """GuidedDrafter: q masked by the request's grammar."""
        return self.propose(request.context, request.gamma, request.params, request.generator,
                            request.history, guide=request.guide)

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None,
                guide: DraftGuide | None = None) -> Proposal:
        if gamma <= 0:
            return Proposal.empty(context.shape[0])
        first = self._sync(context)
        columns = self._columns()

        def next_logits(choice: torch.Tensor | None) -> torch.Tensor:
            token = choice if columns is None or choice is None else columns[choice]
            feed = first if token is None else token[:, None]
            return self.restrict(self.model.extend(feed, last=1)[:, -1])

        # coupled rule: the target's noise at each draft's absolute position
        drafted, probs = sample_drafts(next_logits, gamma, params, generator, history,
                                       context.shape[1], columns, self.vocab_size, guide)
        # the last draft was never fed: the cache holds context + x_1..x_{gamma-1}. They are
        # copied to the host at the next step, after the target's step synchronized anyway:
        # copying now would stall a GPU a second time per step
        self.cached_ids, self._drafts_on_device = context, drafted[:, :-1]
        return Proposal(drafted, probs, forwards=gamma)

    def _columns(self) -> torch.Tensor | None:
        """Token ids of the logits' columns when the head covers a vocabulary subset."""
        return None

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """The last position's logits [B, V] as sampled: at the target's width (cut before
        penalties and filters, so every draft is a target id)."""
        return logits_at_width(logits, self.vocab_size)

    def _sync(self, context: torch.Tensor) -> torch.Tensor:
        if self._drafts_on_device is not None:
            self.cached_ids = torch.cat([self.cached_ids, self._drafts_on_device.cpu()], dim=1)
            self._drafts_on_device = None
        self.cached_ids, feed = sync_cache(self.model, self.cached_ids, self.fit(context))
        return feed

    def fit(self, ids: torch.Tensor) -> torch.Tensor:
        """ids the drafter can embed: a target's padding id past the drafter's width (never
        a tokenizer id, but a sampled target may emit one) is fed as the drafter's last id.
        That only changes what the drafter conditions on, so only acceptance can suffer."""
        return ids if self._embeddable is None else ids.clamp_max(self._embeddable - 1)

