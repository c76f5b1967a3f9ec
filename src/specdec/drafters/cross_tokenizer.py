"""A drafter model with a different tokenizer, exact through token-level intersection.

Timor et al. (ICML 2025), "token-level intersection": the drafter's next-token distribution is
restricted to the tokens whose vocabulary strings exist in both vocabularies, renormalised (by
applying the request's sampling filters to the restricted logits) and moved to target ids. The
proposal is therefore a real q over the target vocabulary, and the usual rule keeps the output
distribution exactly the target's, under greedy and sampling alike.

The drafter's cache follows the target's context through text: each step the context is
decoded with the target tokenizer, re-encoded with the drafter's, and the drafter cache is
rolled back to the common prefix of the two id sequences; only the differing tail is fed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from specdec.drafters.base import Drafter, Proposal
from specdec.drafters.cache_sync import sync_cache
from specdec.drafters.sample import sample_drafts
from specdec.errors import UsageError, VocabularyMismatchError
from specdec.language_model import LanguageModel
from specdec.sampling import SamplingParams, TokenHistory


def vocabulary_intersection(drafter_tokenizer: Any, drafter_vocab_size: int,
                            target_tokenizer: Any, target_vocab_size: int,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(drafter ids, target ids) of the token strings present in both vocabularies.

    Ids beyond a model's logits width are left out, so every mapped id is a valid output.
    """
    drafter_vocab = drafter_tokenizer.get_vocab()
    target_vocab = target_tokenizer.get_vocab()
    pairs = sorted((d_id, target_vocab[s]) for s, d_id in drafter_vocab.items()
                   if s in target_vocab and d_id < drafter_vocab_size
                   and target_vocab[s] < target_vocab_size)
    if not pairs:
        raise VocabularyMismatchError("drafter and target vocabularies share no token strings")
    drafter_ids, target_ids = zip(*pairs, strict=True)
    return torch.tensor(drafter_ids), torch.tensor(target_ids)


class CrossTokenizerDrafter(Drafter):
    """Drafts with `model` (its own tokenizer) and proposes target ids with q over the target."""

    def __init__(self, model: LanguageModel, target: LanguageModel):
        if model.tokenizer is None or target.tokenizer is None:
            raise UsageError("a cross-tokenizer drafter needs tokenizers on drafter and target")
        self.model = model
        self.name = f"{model.name} (cross-tokenizer)"
        self.target_tokenizer = target.tokenizer
        self.target_vocab_size = target.vocab_size
        drafter_ids, target_ids = vocabulary_intersection(
            model.tokenizer, model.vocab_size, target.tokenizer, target.vocab_size)
        self.drafter_ids = drafter_ids.to(model.device)
        self.target_ids = target_ids.to(model.device)
        self.cached_ids = torch.zeros(1, 0, dtype=torch.long)

    def fork(self) -> CrossTokenizerDrafter:
        """A drafter for another concurrent sequence: same weights and id maps, own cache."""
        other = copy.copy(self)
        other.model = self.model.fork()
        other.cached_ids = torch.zeros(1, 0, dtype=torch.long)
        return other

    def warmup(self, capacity: int) -> float:
        return self.model.warmup(capacity)

    def begin(self, prompt_ids: torch.Tensor) -> None:
        ids = self._drafter_tokens(prompt_ids)
        context = self.model.prefill(ids)
        self.cached_ids = context[:, : self.model.cached_length]

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None) -> Proposal:
        if context.shape[0] != 1:
            raise NotImplementedError("the cross-tokenizer drafter supports batch 1 only")
        if gamma <= 0:
            return Proposal.empty(1)
        first = self._sync(self._drafter_tokens(context))
        if first.shape[1] == 0:
            return Proposal.empty(1)
        fed = [self.cached_ids]

        def next_logits(choice: torch.Tensor | None) -> torch.Tensor:
            feed = first if choice is None else self.drafter_ids[choice][:, None]
            # restricted to the intersection, [1, |I|]
            logits = self.model.extend(feed, last=1)[:, -1, self.drafter_ids]
            fed.append(feed.cpu())
            if not torch.isfinite(logits).all():  # sampling would index past the intersection
                raise FloatingPointError(
                    f"drafter logits not finite after feeding {feed.shape[1]} tokens at cache "
                    f"length {self.model.cached_length}")
            return logits

        # columns: the target id of each intersection column (penalties, coupled noise, q)
        tokens, probs = sample_drafts(next_logits, gamma, params, generator, history,
                                      context.shape[1], self.target_ids, self.target_vocab_size)
        # the last draft was never fed: the cache holds everything fed so far
        self.cached_ids = torch.cat(fed, dim=1)
        return Proposal(tokens, probs, forwards=gamma)

    def _drafter_tokens(self, target_ids: torch.Tensor) -> torch.Tensor:
        """The target context as text, re-encoded by the drafter's tokenizer, [1, T']."""
        text = self.target_tokenizer.decode(target_ids[0].tolist(), skip_special_tokens=False)
        ids = self.model.tokenizer(text, add_special_tokens=False).input_ids
        return torch.tensor([ids], dtype=torch.long)

    def _sync(self, ids: torch.Tensor) -> torch.Tensor:
        self.cached_ids, feed = sync_cache(self.model, self.cached_ids, ids)
        return feed
