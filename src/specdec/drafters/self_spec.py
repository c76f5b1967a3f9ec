"""Self-speculation: the target drafts for itself with its own weights in low bits.

The drafter is a low-bit view of the target (`runtime.low_bit_view`): a new module tree over
the target's tensors with quantized linear layers, so no second model is loaded or stored. Its
output head can cover a vocabulary subset only (`VocabularySubsetHead`): the most frequent
tokens plus every token of the prompt and output so far. q is then the drafter's distribution
renormalised over the subset (0 elsewhere); verification against the target's full p keeps the
output distribution exactly the target's whatever the subset misses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.drafters.base import RowDrafter
from specdec.drafters.model import ModelDrafter
from specdec.errors import UsageError
from specdec.language_model import LanguageModel
from specdec.runtime.linear import has_dense_weight
from specdec.runtime.low_bit_view import (
    VocabularySubsetHead,
    frequent_token_ids,
    low_bit_view,
)
from specdec.sampling import SamplingParams, TokenHistory


@dataclass(frozen=True)
class SelfDraftConfig:
    """bits: 8, 4 or None (full precision); vocab: size of the frequent-token part of a subset
    head (None: the full head, in `bits`); context: add prompt and output tokens to the subset."""

    bits: int | None = 8
    group_size: int = 32
    vocab: int | None = None
    context: bool = True
    full_rows: int = 4  # passes over more rows (prefill) use the full-precision weights

    def __post_init__(self) -> None:
        if self.bits not in (None, 4, 8):
            raise UsageError(f"self-drafting bits must be 4, 8 or None, got {self.bits!r}")
        if self.vocab is not None and self.vocab < 1:
            raise UsageError(f"a vocabulary subset needs at least 1 token, got {self.vocab}")

    @property
    def label(self) -> str:
        parts = ["self"] + ([f"int{self.bits}"] if self.bits else [])
        if self.vocab is not None:
            parts.append(f"vocab={self.vocab}" + ("" if self.context else "-nocontext"))
        return "@".join(parts)


class SelfDrafter(ModelDrafter):
    """ModelDrafter over a low-bit view of the target; maps subset-head columns to token ids."""

    def __init__(self, model: LanguageModel, head: VocabularySubsetHead | None, vocab_size: int,
                 name: str, context_tokens: bool = True, target: LanguageModel | None = None):
        super().__init__(model)
        self.name = name
        self.head = head
        self.vocab_size = vocab_size  # the target's: width of q
        self.context_tokens = context_tokens and head is not None
        self.seen = 0  # context tokens already added to the head
        self.target = target  # whose prompt cache begin() copies, when it can
        self.copied_prefill = False  # how the last begin() filled the cache, for tests

    def fork(self) -> SelfDrafter:
        """A drafter for another concurrent sequence: the low-bit weights shared, its own
        cache. A vocabulary-subset head grows with its sequence's context, so it cannot be
        shared: such a drafter serves one sequence at a time."""
        if self.head is not None:
            raise ValueError(f"drafter {self.name!r} has a vocabulary-subset head that follows "
                             "one sequence: use a batch size of 1")
        # target None: the batch's target cache is not the runner's own, nothing to copy
        return SelfDrafter(self.model.fork(), None, self.vocab_size, self.name)

    def begin(self, prompt_ids: torch.Tensor) -> None:
        if self.head is not None:
            self.head.reset()
            self.seen = 0
            self._cover(prompt_ids)
        # the loop prefills the target first: its cache holds the prompt's keys and values in
        # full precision, which is what the drafter's own prefill would compute (prefill runs
        # the full-precision weights); copying them skips a second prefill
        self.copied_prefill = self.target is not None and \
            self.model.prefill_from(self.target, prompt_ids)
        if self.copied_prefill:
            self.cached_ids = prompt_ids[:, : self.model.cached_length]
            self._drafts_on_device = None
        else:
            super().begin(prompt_ids)

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None):
        if self.head is not None:
            self._cover(context)
        return super().propose(context, gamma, params, generator, history)

    def batched(self, max_rows: int) -> RowDrafter | None:
        """Row by row: the subset head follows one sequence's tokens, and passes over more
        than `full_rows` rows take the full-precision weights."""
        return None

    def _cover(self, context: torch.Tensor) -> None:
        """Add the context's new tokens (the target's corrections among them) to the subset."""
        if not self.context_tokens:
            return
        if context.shape[0] != 1:
            raise NotImplementedError("a vocabulary-subset head supports batch 1 only")
        self.seen = min(self.seen, context.shape[1])
        self.head.add(context[0, self.seen:].tolist())
        self.seen = context.shape[1]

    def _columns(self) -> torch.Tensor | None:
        return None if self.head is None else self.head.ids.to(self.model.device)

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return super().restrict(logits)
        return logits[:, : len(self.head.ids)]  # columns past the subset's are unused capacity


def special_token_ids(target: LanguageModel) -> list[int]:
    """End-of-sequence and other special ids: always in a subset (stopping must be draftable)."""
    ids: list[int] = []
    tokenizer = target.tokenizer
    if tokenizer is not None:
        ids += list(getattr(tokenizer, "all_special_ids", []) or [])
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
    config = getattr(getattr(target, "model", None), "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is not None:
        ids += [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]
    return ids


def build_self_drafter(target: LanguageModel, config: SelfDraftConfig) -> SelfDrafter:
    """A SelfDrafter over a low-bit view of `target` (a transformers-backed model)."""
    from specdec.runtime.wrap import wrap

    hf_model = getattr(target, "model", None)
    output = getattr(hf_model, "get_output_embeddings", lambda: None)()
    if output is None:
        raise UsageError(f"--draft self needs a transformers target, {target.name!r} is not one")
    if not has_dense_weight(output):
        raise UsageError(f"--draft self quantizes a dense target's weights; {target.name!r} "
                         "already computes with quantized ones (--dtype gguf): load it with "
                         "--dtype bfloat16 or float32 to self-draft, or draft with ngram")
    if hf_model.config.is_encoder_decoder:
        raise UsageError("--draft self supports decoder-only targets")
    head = None
    if config.vocab is not None:
        ids = frequent_token_ids(target.vocab_size, config.vocab, special_token_ids(target))
        head = VocabularySubsetHead(output, ids, config.bits, config.group_size)
    view = low_bit_view(hf_model, config.bits, config.group_size, config.full_rows, head)
    # the target's runner and compile setting (the view's tensors are already on its device)
    widths = tuple(getattr(target, "widths", ()))
    model = wrap(view, target.tokenizer, config.label, runtime=target.runtime,
                 compile=bool(widths),
                 **({"widths": widths} if widths else {}))
    return SelfDrafter(model, head, target.vocab_size, config.label, config.context, target)
