"""The one draft-sampling loop every drafter with a real q shares.

Per draft: penalize the logits with the history (drafts so far included, as the target will
see them), adjust them with the request's filters into q, draw a token from q (multinomial, or
the coupled rule's noise at the draft's absolute position), extend the history. Drafters
differ only in where the next logits come from and which token ids their columns mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from specdec.noise import draw
from specdec.sampling import SamplingParams, TokenHistory, adjusted_probs, penalize

# the logits [B, C] of the next draft, given the previous draft's column [B] (None: first)
NextLogits = Callable[[torch.Tensor | None], torch.Tensor]


def sample_drafts(next_logits: NextLogits, gamma: int, params: SamplingParams,
                  generator: torch.Generator, history: TokenHistory | None, position: int,
                  columns: torch.Tensor | None = None, width: int | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """gamma drafts [B, gamma] (token ids) and their q [B, gamma, width] (None when greedy).

    columns: the token id of each logits column, when the logits cover a subset of the
    vocabulary (None: column i is token i); q is then scattered to `width` columns, zero
    outside the subset. position: the absolute position of the first draft (coupled rule).
    """
    tokens, probs = [], []
    choice = None
    for i in range(gamma):
        logits = next_logits(choice)
        if history is not None:  # penalties are per token id: through the columns' ids
            logits = penalize(logits, params, history, columns=columns)
        if params.greedy:  # q is one-hot at the draft: None selects verification's one-hot rule
            choice = logits.argmax(dim=-1)
        else:
            q = adjusted_probs(logits, params)
            choice = draw(q, params, generator, position + i, columns)
            probs.append(q if columns is None else _scatter(q, columns, width))
        token = choice if columns is None else columns[choice]
        tokens.append(token)
        if history is not None:  # the next draft sees this one, as the target will
            history = history.plus(token[:, None])
    return torch.stack(tokens, dim=1), torch.stack(probs, dim=1) if probs else None


def _scatter(q: torch.Tensor, columns: torch.Tensor, width: int | None) -> torch.Tensor:
    """q over a subset [B, C] -> q over the vocabulary [B, width], 0 outside the subset."""
    if width is None:
        raise ValueError("q over a subset of the vocabulary needs the vocabulary's width")
    full = q.new_zeros(q.shape[0], width)
    full[:, columns] = q
    return full
