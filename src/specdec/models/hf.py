"""transformers models behind the LanguageModel protocol.

One forward per `extend`; `rollback` crops the DynamicCache (`crop(-n)`), never recomputes.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel


class _CachedModel:
    """Shared bookkeeping: name, vocabulary, the cache and its length."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any = None, name: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "name_or_path", "") or type(model).__name__
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_length = _context_window(model.config)
        self.cache: Any = None
        self._length = 0

    @property
    def cached_length(self) -> int:
        return self._length

    def rollback(self, n: int) -> None:
        if n < 0 or n > self._length:
            raise ValueError(f"cannot roll back {n} of {self._length} cached positions")
        if n == 0:  # crop(-0) is crop(0): some transformers versions empty the cache for it
            return
        self._self_attention_cache().crop(-n)
        self._length -= n

    def _self_attention_cache(self) -> DynamicCache:
        return self.cache

    def _new_cache(self) -> DynamicCache:
        # Plain full-length layers even for sliding-window models (Gemma 3): the attention
        # mask still applies the window, and any position can be cropped at any time.
        # transformers' sliding layers drop what left the window, so they cannot roll back
        # a multi-token extend unless cropped after every single forward.
        return DynamicCache()


class HFCausalLM(_CachedModel):
    """A decoder-only transformers model (Llama, Qwen2, Gemma 3, GPT-2, ...)."""

    @torch.inference_mode()
    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        self.cache, self._length = self._new_cache(), 0
        if prompt_ids.shape[1] > 1:
            self.extend(prompt_ids[:, :-1])
        return prompt_ids

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tokens, past_key_values=self.cache, use_cache=True)
        self._length += tokens.shape[1]
        return out.logits.float()


class HFSeq2SeqLM(_CachedModel):
    """An encoder-decoder model (T5): the encoder runs once, the decoder cache is cropped."""

    @torch.inference_mode()
    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        encoder = self.model.get_encoder()
        self.encoder_outputs = encoder(input_ids=prompt_ids)
        self.cache = EncoderDecoderCache(self._new_cache(), DynamicCache())
        self._length = 0
        start = self.model.config.decoder_start_token_id
        return torch.full((prompt_ids.shape[0], 1), start, dtype=torch.long)

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(encoder_outputs=self.encoder_outputs, decoder_input_ids=tokens,
                         past_key_values=self.cache, use_cache=True)
        self._length += tokens.shape[1]
        return out.logits.float()

    def _self_attention_cache(self) -> DynamicCache:
        return self.cache.self_attention_cache


def wrap(model: PreTrainedModel, tokenizer: Any = None, name: str | None = None):
    """The right LanguageModel adapter for a transformers model."""
    if model.config.is_encoder_decoder:
        return HFSeq2SeqLM(model, tokenizer, name)
    return HFCausalLM(model, tokenizer, name)


def _context_window(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None  # e.g. T5's relative positions have no hard limit

