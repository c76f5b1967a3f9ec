"""A drafter's cache kept in step with the target's context by token ids: whatever the target
accepted or replaced, roll back to the common prefix and feed the rest."""

from __future__ import annotations

import torch

from specdec.language_model import LanguageModel


def sync_cache(model: LanguageModel, cached_ids: torch.Tensor,
               ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll model's cache (holding cached_ids) back to its common prefix with ids.

    Returns the ids now cached and the tail of ids still to feed.
    """
    common = min(common_prefix(cached_ids, ids), ids.shape[1] - 1)
    common = max(common, 0)  # keep one token pending for its logits, if there is one
    model.rollback(model.cached_length - common)
    return ids[:, :common], ids[:, common:]


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest prefix shared by every row of a and b."""
    n = min(a.shape[1], b.shape[1])
    same = (a[:, :n] == b[:, :n]).all(dim=0)
    mismatch = (~same).nonzero()
    return int(mismatch[0]) if len(mismatch) else n
