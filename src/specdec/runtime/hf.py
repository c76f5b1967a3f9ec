"""transformers models behind the LanguageModel protocol: shared properties and the dynamic path.

The dynamic path runs transformers' own forward with a DynamicCache: one forward per `extend`,
`rollback` crops the cache (`crop(-n)`), never recomputes. It serves every architecture the
static runner (runtime/static.py) does not: encoder-decoders (T5), sliding-window models
(Gemma 3), GPT-2 and the rest.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from specdec.language_model import LanguageModel
from specdec.runtime.tree_attention import is_chain

if TYPE_CHECKING:  # transformers' modeling stack costs seconds to import: only where it runs
    from transformers import DynamicCache, PreTrainedModel


class HFModel(LanguageModel):
    """What every transformers-backed model exposes: name, vocabulary, window, device, EOS."""

    runtime = "dynamic"

    def __init__(self, model: PreTrainedModel, tokenizer: Any = None, name: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "name_or_path", "") or type(model).__name__
        self.vocab_size = output_width(model)
        self.max_length = context_window(model.config)
        # transformers 5.24 renamed the forward's `past_key_values` to `cache`
        self._cache_kwarg = ("cache" if "cache" in inspect.signature(model.forward).parameters
                             else "past_key_values")

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return eos_token_ids(self.model, self.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def kv_bytes_per_position(self) -> int:
        """Bytes one cached position takes (keys and values of every layer), from the config;
        0 where the config does not say."""
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        heads = getattr(config, "num_attention_heads", 0) or 0
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or \
            (config.hidden_size // heads if heads else 0)
        layers = getattr(config, "num_hidden_layers", 0) or 0
        return 2 * layers * kv_heads * head_dim * self.cache_dtype.itemsize

    @property
    def cache_dtype(self) -> torch.dtype:
        """The dtype of the cached keys and values: the weights'."""
        return next(self.model.parameters()).dtype

    def to_device(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.to(self.device, non_blocking=True)

    def fork(self) -> HFModel:
        """A runner of the same kind over the same weights, with its own empty cache."""
        return type(self)(self.model, self.tokenizer, self.name)

    # transformers' forward takes no tree mask here: lines only (the static runner verifies
    # trees); a line passed as a tree is an ordinary extend
    verifies_trees = False
    _line_nodes = 0  # nodes of the last extend_tree

    def extend_tree(self, tokens: torch.Tensor, parents: list[int]) -> torch.Tensor:
        if not is_chain(parents):
            raise NotImplementedError(f"{self.name} verifies lines only (verifies_trees is "
                                      "False); branching trees need the static runner")
        self._line_nodes = tokens.shape[1]
        return self.extend(tokens)  # type: ignore[attr-defined]

    def accept_path(self, nodes: list[int]) -> None:
        # after a line: the path is a prefix of its nodes; drop the rest
        if nodes != list(range(len(nodes))) or len(nodes) > self._line_nodes:
            raise ValueError(f"a line of {self._line_nodes} keeps a prefix, not {nodes}")
        self.rollback(self._line_nodes - len(nodes))  # type: ignore[attr-defined]
        self._line_nodes = 0


class _CachedModel(HFModel):
    """The dynamic cache and its length."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any = None, name: str | None = None):
        super().__init__(model, tokenizer, name)
        self.cache: Any = None
        self._length = 0

    @property
    def cached_length(self) -> int:
        return self._length

    def rollback(self, n: int) -> None:
        if n < 0 or n > self._length:
            raise ValueError(f"cannot roll back {n} of {self._length} cached positions")
        if n == 0:  # crop(-0) is crop(0): some versions read that as "keep nothing"
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
        from transformers import DynamicCache

        return DynamicCache()


class HFCausalLM(_CachedModel):
    """A decoder-only transformers model (Llama, Qwen2, Gemma 3, GPT-2, ...), dynamic cache."""

    @torch.inference_mode()
    def prefill(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        self.cache, self._length = self._new_cache(), 0
        if prompt_ids.shape[1] > 1:
            self.extend(prompt_ids[:, :-1], last=1)  # logits of one position, not T x V
        return prompt_ids

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor, last: int | None = None) -> torch.Tensor:
        out = self.model(input_ids=self.to_device(tokens), use_cache=True,
                         logits_to_keep=last or 0, **{self._cache_kwarg: self.cache})
        self._length += tokens.shape[1]
        return out.logits.float()


class HFSeq2SeqLM(_CachedModel):
    """An encoder-decoder model (T5): the encoder runs once, the decoder cache is cropped."""

    @torch.inference_mode()
    def prefill(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        from transformers import DynamicCache, EncoderDecoderCache

        encoder = self.model.get_encoder()
        self.encoder_outputs = encoder(input_ids=self.to_device(prompt_ids))
        self.cache = EncoderDecoderCache(self._new_cache(), DynamicCache())
        self._length = 0
        start = self.model.config.decoder_start_token_id
        return torch.full((prompt_ids.shape[0], 1), start, dtype=torch.long)

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor, last: int | None = None) -> torch.Tensor:
        out = self.model(encoder_outputs=self.encoder_outputs,
                         decoder_input_ids=self.to_device(tokens), use_cache=True,
                         **{self._cache_kwarg: self.cache})
        self._length += tokens.shape[1]
        logits = out.logits if last is None else out.logits[:, -last:]
        return logits.float()

    def _self_attention_cache(self) -> DynamicCache:
        return self.cache.self_attention_cache


def output_width(model: Any) -> int:
    """Columns of the logits: the output layer's out_features (a low-bit head has no dense
    weight to read the shape from)."""
    head = model.get_output_embeddings()
    width = getattr(head, "out_features", None)
    return int(width) if isinstance(width, int) else int(head.weight.shape[0])


def context_window(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None  # e.g. T5's relative positions have no hard limit


def eos_token_ids(model: PreTrainedModel, tokenizer: Any) -> frozenset[int]:
    """The ids that end a sequence: the generation config's, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset(int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]))
