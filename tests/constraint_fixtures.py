"""Tiny tokenizers, models and drafters for the constraint tests."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from specdec.drafters.base import Drafter, Proposal

SPECIALS = ["<unk>", "<s>", "</s>"]


def chars_tokenizer(chars: str) -> PreTrainedTokenizerFast:
    """One token per character of `chars` (after <unk>, <s> and </s>)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + list(chars))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", clean_up_tokenization_spaces=False)


class Violator(Drafter):
    """Drafts tokens drawn uniformly from the whole vocabulary (specials included) with the
    request's generator, and says so (q uniform): most of its drafts break any grammar.
    fixed: instead always propose `fixed` (deterministic, q one-hot)."""

    def __init__(self, vocab: int, fixed: int | None = None):
        self.vocab, self.fixed = vocab, fixed
        self.name = "violator"

    def begin(self, prompt_ids: torch.Tensor) -> None:
        pass

    def fork(self) -> Violator:
        return Violator(self.vocab, self.fixed)

    def propose(self, context, gamma, params, generator, history=None) -> Proposal:
        if self.fixed is not None:
            return Proposal(torch.full((1, gamma), self.fixed, dtype=torch.long))
        tokens = torch.randint(self.vocab, (1, gamma), generator=generator)
        if params.greedy:
            return Proposal(tokens)
        return Proposal(tokens, torch.full((1, gamma, self.vocab), 1.0 / self.vocab))
