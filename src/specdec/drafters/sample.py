"""The one draft-sampling loop every drafter with a real q shares.

Per draft: penalize the logits with the history (drafts so far included, as the target will
see them), adjust them with the request's filters into q, draw a token from q (multinomial, or
the coupled rule's noise at the draft's absolute position), extend the history. Drafters
differ only in where the next logits come from and which token ids their columns mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from specdec.noise import draw
from specdec.sampling import SamplingParams, TokenHistory, adjusted_probs, penalize

if TYPE_CHECKING:  # specdec.grammar imports llguidance: only requests with a constraint do
    from specdec.grammar import DraftGuide

# the logits [B, C] of the next draft, given the previous draft's column [B] (None: first)
NextLogits = Callable[[torch.Tensor | None], torch.Tensor]


def sample_drafts(next_logits: NextLogits, gamma: int, params: SamplingParams,
                  generator: torch.Generator, history: TokenHistory | None, position: int,
                  columns: torch.Tensor | None = None, width: int | None = None,
                  guide: DraftGuide | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """gamma drafts [B, gamma] (token ids) and their q [B, gamma, width] (None when greedy).

    columns: the token id of each logits column, when the logits cover a subset of the
    vocabulary (None: column i is token i); q is then scattered to `width` columns, zero
    outside the subset. position: the absolute position of the first draft (coupled rule).
    guide: a constrained request's grammar along the drafts (one row): q is masked by it,
    after the penalties and before the filters, as the target's p is.
    """
    sampler = DraftSampler(params, generator, history, position, columns, width, guide)
    choice = None
    for _ in range(gamma):
        choice = sampler.next(next_logits(choice))
    return sampler.result()


class DraftSampler:
    """The drafts of one request, one at a time: `next(logits)` per draft (the logits may
    come from a forward shared with other requests), then `result()`."""

    def __init__(self, params: SamplingParams, generator: torch.Generator,
                 history: TokenHistory | None, position: int,
                 columns: torch.Tensor | None = None, width: int | None = None,
                 guide: DraftGuide | None = None):
        self.params, self.generator, self.history = params, generator, history
        self.position, self.columns, self.width = position, columns, width
        self.guide = guide
        self.tokens: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []

    def next(self, logits: torch.Tensor) -> torch.Tensor:
        """Draw the next draft from logits [B, C]; returns its column [B]."""
        params, columns = self.params, self.columns
        if self.history is not None:  # penalties are per token id: through the columns' ids
            logits = penalize(logits, params, self.history, columns=columns)
        if self.guide is not None:  # the grammar's mask, as the target's p gets it
            allowed = self.guide.allowed().to(logits.device)
            logits = logits.masked_fill(~(allowed if columns is None else allowed[columns]),
                                        float("-inf"))
        if params.greedy:  # q is one-hot at the draft: None selects verification's one-hot rule
            choice = logits.argmax(dim=-1)
        else:
            q = adjusted_probs(logits, params)
            choice = draw(q, params, self.generator, self.position + len(self.tokens), columns)
            self.probs.append(q if columns is None else _scatter(q, columns, self.width))
        token = choice if columns is None else columns[choice]
        self.tokens.append(token)
        if self.guide is not None:
            self.guide.advance(int(token[0]))
        if self.history is not None:  # the next draft sees this one, as the target will
            self.history = self.history.plus(token[:, None])
        return choice

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The drafts [B, k] (token ids) and their q [B, k, width] (None when greedy)."""
        return torch.stack(self.tokens, dim=1), \
            torch.stack(self.probs, dim=1) if self.probs else None


def _scatter(q: torch.Tensor, columns: torch.Tensor, width: int | None) -> torch.Tensor:
    """q over a subset [B, C] -> q over the vocabulary [B, width], 0 outside the subset."""
    if width is None:
        raise ValueError("q over a subset of the vocabulary needs the vocabulary's width")
    full = q.new_zeros(q.shape[0], width)
    full[:, columns] = q
    return full
