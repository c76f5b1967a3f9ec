"""The static runner: llama-family decoders over a preallocated, position-indexed KV cache.

gpt-fast's design (a static cache indexed by position) on transformers' own weights and layer
modules: the runner calls the model's embedding, norms, MLPs and q/k/v/o projections (so
quantized linear layers work unchanged) and does attention itself, writing keys and values at
their absolute positions. Rollback moves the write position and nothing else: slots past it
are never attended (the causal mask only admits keys at or before a query's position) and are
overwritten by the next extend. Prefill runs in chunks and computes no logits. The cache and
its length are runtime/kv_cache.py's; the runner decides how big it grows.

With `compile=True` the k-token step is compiled (torch.compile; CUDA graphs on a GPU) for a
few widths: a block of k tokens is padded up to the next width, the padded positions' logits
are dropped, and the cache slots they wrote lie past the write position. Compiled steps attend
over the whole buffer under a mask; eager steps attend over the filled part.

Each width compiles once and is then reused whatever the cache's capacity: every width is a
code object of its own (dynamo keeps compiled graphs, and counts them against its recompile
limit, per code object; runners of the same shapes share a width's graph, a drafter of other
shapes adds one), the capacity is a dynamic dimension of the cache tensors (a regrown cache
is a new tensor of a new size: no shape or address guard fails), and the rotary tables are
read outside the compiled graph. Only single-row steps compile: batched rows (models.rows)
run eagerly.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from specdec.runtime.attention import blocked_attention, causal_mask, key_span, query_chunk
from specdec.runtime.hf import HFModel
from specdec.runtime.kernels import fused_ops_available
from specdec.runtime.kv_cache import KVCache, StaticKVCache, rounded_capacity
from specdec.runtime.packing import PackReport, pack_decoder, single, stacked_parts
from specdec.runtime.tree_attention import TreeLayout, tree_layout, tree_rows_attention

if TYPE_CHECKING:
    from transformers import PreTrainedModel

STATIC_ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral")
DEFAULT_WIDTHS = (1, 2, 4, 8, 16)
# positions reserved past the prompt when the caller gives no hint (a drafter's begin does
# not know max_new_tokens); a slot costs 2 * layers * kv_heads * head_dim values
DEFAULT_RESERVE = 1024
# keys, values, rotary and attention in float32 whatever the weights' dtype: attention reads
# the cache without converting it, and rounds no worse than transformers' bf16 attention
CACHE_DTYPE = torch.float32


def static_unsupported(model: PreTrainedModel) -> str | None:
    """Why the static runner cannot run `model`, or None when it can."""
    config = model.config
    kind = getattr(config, "model_type", "")
    if config.is_encoder_decoder or kind not in STATIC_ARCHITECTURES:
        return f"architecture {kind!r} (static runner: {', '.join(STATIC_ARCHITECTURES)})"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return "layers other than full attention"
    inner = getattr(model, "model", None)
    parts = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, p) for p in parts):
        return "an unfamiliar module layout"
    if "dynamic" in str(getattr(inner.rotary_emb, "rope_type", "default")):
        return "dynamic rotary scaling (depends on the sequence length)"
    for layer in inner.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj",
                                                              "o_proj", "head_dim")):
            return "an unfamiliar attention module"
    return None


class StaticCausalLM(HFModel):
    """A llama-family decoder (Llama, Qwen2, Qwen3, Mistral) on a static KV cache."""

    runtime = "static"

    def __init__(self, model: PreTrainedModel, tokenizer: Any = None, name: str | None = None,
                 compile: bool = False, widths: tuple[int, ...] = DEFAULT_WIDTHS,
                 pack: bool = True):
        reason = static_unsupported(model)
        if reason is not None:
            raise ValueError(f"the static runner cannot run this model: {reason}")
        # before HFModel reads the head: packing replaces it (and frees the dense weights);
        # inductor cannot lower the packed products' opaque weights: compiled runners keep
        # F.linear (inductor's freezing packs them its own way)
        self.pack = pack
        # the fused per-layer ops (eager CPU steps): one numerics for lines, rows and trees
        self.fused = not compile and fused_ops_available()
        self.packing = pack_decoder(model) if pack and not compile else \
            PackReport(skipped="compiled steps" if compile else "not requested")
        super().__init__(model, tokenizer, name)
        inner = model.model
        self.embed, self.layers, self.norm = inner.embed_tokens, list(inner.layers), inner.norm
        self.head = model.get_output_embeddings()
        self._blocks = [_Projections.of(layer) for layer in self.layers]
        self.head_dim = int(self.layers[0].self_attn.head_dim)
        self.kv_heads = int(model.config.num_key_value_heads)
        self.groups = int(model.config.num_attention_heads) // self.kv_heads
        # the cache and its rows' lengths (one empty row until the first prefill)
        self.kv = KVCache(self._allocate, rows=1)
        self._cos = self._sin = torch.empty(0)
        self.widths = tuple(sorted(set(widths))) if compile else ()
        self.compile_s = 0.0  # time spent compiling (first call of each width), reported
        self._compiled_widths: set[int] = set()
        self.compiled_steps = 0  # steps run by a compiled width (reported; tests check it)
        self.steps: dict[int, Callable[..., torch.Tensor]] = \
            {width: self._compile(width) for width in self.widths}

    # --- the protocol -----------------------------------------------------------------

    @property
    def cache(self) -> StaticKVCache | None:
        return self.kv.tensors

    @property
    def cached_length(self) -> int:
        lengths = self.kv.lengths  # every row at the same length
        return lengths[0] if lengths else 0

    @torch.inference_mode()
    def prefill(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        rows, length = prompt_ids.shape
        self._reset(rows, length, reserve)
        cached = max(length - 1, 0)  # the last token stays pending
        self.kv.add_rows(self.forward_rows, self.to_device(prompt_ids)[:, :cached],
                         [cached] * rows)
        return prompt_ids

    @torch.inference_mode()
    def prefill_from(self, other: Any, prompt_ids: torch.Tensor, reserve: int = 0) -> bool:
        """Prefill by copying `other`'s cache, if it holds exactly this prompt's prefix.

        For a drafter that shares the target's architecture (self-speculation): True when
        copied; False (nothing done) when the caches differ in shape, dtype or device, or
        `other` does not hold prompt_ids[:, :-1]; the caller then prefills itself.
        """
        rows, length = prompt_ids.shape
        theirs = getattr(other, "cache", None)
        if not isinstance(other, StaticCausalLM) or not isinstance(theirs, StaticKVCache) or \
                other.cached_length != length - 1 or theirs.rows != rows or \
                (len(other.layers), other.kv_heads, other.head_dim) != \
                (len(self.layers), self.kv_heads, self.head_dim) or \
                other.embed.weight.dtype != self.embed.weight.dtype or \
                other.device != self.device:
            return False
        self._reset(rows, length, reserve)
        self.kv.add_copied(theirs, [length - 1] * rows)
        return True

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor, last: int | None = None) -> torch.Tensor:
        rows, k = tokens.shape
        width, start = self._width(k), self.cached_length
        self._ensure_capacity(rows, start + (width or k))
        ids = self.to_device(tokens)
        if width is None:
            logits = self._eager(ids, start, keep=k if last is None else min(last, k))
        else:
            logits = self._compiled(ids, width, start)[:, :k]
            if last is not None:
                logits = logits[:, -last:]
        self.kv.advance(k)
        return logits.float()

    def rollback(self, n: int) -> None:
        self.kv.rollback([n] * self.kv.count)

    verifies_trees = True

    @torch.inference_mode()
    def extend_tree(self, tokens: torch.Tensor, parents: list[int]) -> torch.Tensor:
        """A token tree [1, N] in one eager forward; logits [1, N, V] (language_model.py).

        Node i is written at slot length + i and attends to the committed context and its
        ancestors (runtime/tree_attention.py): its logits are the same bits as those of the
        line extend of its root path."""
        rows, n = tokens.shape
        if rows != 1:
            raise ValueError(f"tree verification runs one row here, got {rows} (batch rows: "
                             "runtime/rows.py)")
        if len(parents) != n:
            raise ValueError(f"{len(parents)} parents for {n} tree nodes")
        start = self.cached_length
        self._ensure_capacity(1, start + n)
        layout = tree_layout(parents, start, self.device)
        logits = self.forward_tree(self.to_device(tokens), [layout], start + n, self.cache)
        self.kv.advance(n, tree=True)
        return logits.float()

    @torch.inference_mode()
    def accept_path(self, nodes: list[int]) -> None:
        """Keep the last tree's `nodes` (a root path, in order) at consecutive slots from the
        tree's start: their keys and values are moved once, the rest forgotten."""
        self.kv.accept_paths([nodes])

    def fork(self) -> StaticCausalLM:
        """A runner over the same weights (packed ones shared) with its own empty cache,
        uncompiled."""
        return StaticCausalLM(self.model, self.tokenizer, self.name, pack=self.pack)

    @torch.inference_mode()  # as every later call: dynamo guards on inference mode
    def warmup(self, capacity: int, rows: int = 1) -> float:
        """Compile every width now (for servers: not on the first request); returns seconds.
        `capacity` sizes the cache; a later regrowth does not recompile."""
        self._ensure_capacity(rows, capacity)
        for width in self.widths:
            self._compiled(torch.zeros(rows, width, dtype=torch.long, device=self.device),
                           width, start=0)
        return self.compile_s

    # --- forwards -------------------------------------------------------------------------

    def _eager(self, ids: torch.Tensor, start: int, keep: int) -> torch.Tensor | None:
        width = ids.shape[1]
        positions = torch.arange(start, start + width, device=ids.device)[None]
        return self.forward_rows(ids, positions, start + width, self.cache, keep)

    def forward_rows(self, ids: torch.Tensor, positions: torch.Tensor, end: int,
                     cache: StaticKVCache | None, keep: int) -> torch.Tensor | None:
        """Eager forward of ids [R, w] at positions [R or 1, w] over `cache`'s rows, attending
        to slots < end; the logits of the last `keep` positions (None for 0)."""
        hidden = self._layers(ids, positions, *self._rotary(positions), end=end,
                              cache=cache or self.cache)
        if keep == 0:
            return None
        return self.head(self.norm(hidden[:, -keep:]))

    def forward_tree(self, ids: torch.Tensor, layouts: list[TreeLayout], end: int,
                     cache: StaticKVCache | None) -> torch.Tensor:
        """Eager forward of one token tree per row of ids [R, N] (row r's nodes laid out by
        layouts[r]) over `cache`'s rows; logits of every node [R, N, V]."""
        positions = torch.cat([layout.positions for layout in layouts])  # [R, N]
        hidden = self._layers(ids, positions, *self._rotary(positions), end=end,
                              cache=cache or self.cache, trees=layouts)
        return self.head(self.norm(hidden))

    def _full(self, ids: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """The compiled step: attends over the whole buffer, logits at every position."""
        return self.head(self.norm(self._layers(ids, positions, cos, sin, None, cache)))

    def _compiled(self, ids: torch.Tensor, width: int, start: int) -> torch.Tensor:
        rows, k = ids.shape
        # a fresh tensor (made in inference mode, as dynamo's guards expect whoever made ids);
        # padded: these positions' logits are dropped, their slots overwritten later
        ids = torch.cat([ids, ids.new_zeros(rows, width - k)], dim=1)
        positions = torch.arange(start, start + width, device=ids.device)[None]
        first = width not in self._compiled_widths
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        assert self.cache is not None
        logits = self.steps[width](ids, positions, *self._rotary(positions), self.cache)
        if self.device.type == "cuda":
            logits = logits.clone()  # a CUDA graph's output is overwritten by its next replay
        if first:
            self.compile_s += time.perf_counter() - t0
            self._compiled_widths.add(width)
        self.compiled_steps += 1
        return logits

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at positions [R, w], as [R, 1, w, D] (broadcast over heads)."""
        return self._cos[positions][:, None], self._sin[positions][:, None]

    def _layers(self, ids: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, end: int | None, cache: StaticKVCache | None,
                trees: list[TreeLayout] | None = None) -> torch.Tensor:
        """positions [R, w]: R = 1 (every row at the same positions) or one per row; keys at
        slots < end (None: the whole buffer, for compiled steps). trees: each row's tokens
        are a tree's nodes, written at its layout's slots."""
        assert cache is not None
        hidden = self.embed(ids)
        if self.fused and end is not None:
            visible = Visibility.of(positions, cos, sin, trees)

            def attend(index: int, attn: Any, block: _Projections, x: torch.Tensor
                       ) -> torch.Tensor:
                return self._fused_attention(cache, index, attn, block, x, visible)
        else:
            attend = self._attention_setup(ids, positions, cos, sin, end, cache, trees)
        for index, (layer, block) in enumerate(zip(self.layers, self._blocks, strict=True)):
            attended = attend(index, layer.self_attn, block, layer.input_layernorm(hidden))
            hidden = hidden + attended
            hidden = hidden + block.mlp(layer.post_attention_layernorm(hidden))
        return hidden

    def _attention_setup(self, ids: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, end: int | None, cache: StaticKVCache,
                         trees: list[TreeLayout] | None) -> Callable[..., torch.Tensor]:
        """The torch attention of every layer of one forward (compiled steps, and where the
        fused ops are unavailable): the mask, the slots written and the query chunking are
        the same for every layer, decided once here."""
        capacity = cache.capacity
        span = capacity if end is None else key_span(end, capacity)
        slots = positions if trees is None else torch.stack([t.slots for t in trees])
        hidden_keys = None if trees is not None else \
            causal_mask(positions.repeat(1, self.groups), span)
        # compiled steps are a few tokens wide: no chunking (which would guard on capacity)
        chunk = None if end is None else query_chunk(ids.shape[0], self.kv_heads, span)

        def attend(index: int, attn: Any, block: _Projections, x: torch.Tensor) -> torch.Tensor:
            return self._attention(cache, index, attn, block, x, slots, cos, sin, span,
                                   hidden_keys, chunk, trees)

        return attend

    def _fused_attention(self, cache: StaticKVCache, index: int, attn: Any,
                         block: _Projections, x: torch.Tensor, visible: Visibility
                         ) -> torch.Tensor:
        """q/k/v, rotary, the cache write and attention in two compiled ops
        (runtime/kernels/decoder_ops.cpp): each query attends to exactly its visible keys in
        slot order, so a tree node is the bits of its root path's line."""
        q, k, v = self._qkv(attn, block, x)
        keys, values = cache.keys[index], cache.values[index]
        rotated = torch.ops.specdec.rotary_write(q, k, v, visible.cos, visible.sin, keys,
                                                 values, visible.slots, self.head_dim)
        out = torch.ops.specdec.attention(rotated, keys, values, visible.upto,
                                          visible.tree_mask, visible.tree_start,
                                          attn.scaling, x.shape[1])
        return block.o(out.to(x.dtype))

    def _qkv(self, attn: Any, block: _Projections, x: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [R, w, heads * D] in float32 (Qwen3: q and k normed per head)."""
        q, k, v = block.qkv(x)
        if hasattr(attn, "q_norm"):
            shape = (*x.shape[:2], -1, self.head_dim)
            q = attn.q_norm(q.reshape(shape)).flatten(2)
            k = attn.k_norm(k.reshape(shape)).flatten(2)
        return q.float(), k.float(), v.float()

    def _attention(self, cache: StaticKVCache, index: int, attn: Any, block: _Projections,
                   x: torch.Tensor, slots: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, span: int, hidden_keys: torch.Tensor | None,
                   chunk: int | None, trees: list[TreeLayout] | None = None) -> torch.Tensor:
        rows, width, _ = x.shape
        shape = (rows, width, -1, self.head_dim)
        q, k, v = self._qkv(attn, block, x)
        heads = q.shape[-1] // self.head_dim
        # queries and keys rotated together, in float32 like the cache and attention
        qk = _rotate(torch.cat([q, k], dim=-1).view(shape).transpose(1, 2), cos, sin)
        q, k = qk[:, :heads], qk[:, heads:]
        v = v.reshape(shape).transpose(1, 2)
        keys, values = cache.keys[index], cache.values[index]
        if slots.shape[0] == 1:  # every row writes the same slots
            keys.index_copy_(2, slots[0], k)
            values.index_copy_(2, slots[0], v)
        else:  # ragged rows: each writes at its own slots
            index = slots[:, None, :, None].expand_as(k)
            keys.scatter_(2, index, k)
            values.scatter_(2, index, v)
        keys, values = keys[:, :, :span], values[:, :, :span]
        # grouped-query attention without repeating keys: the query heads that share a key
        # head become extra query rows of that head, [B, H_kv, groups * width, D]
        groups = self.groups
        q = q.reshape(rows, self.kv_heads, groups * width, self.head_dim)
        if trees is None:
            assert hidden_keys is not None
            out = blocked_attention(q, keys, values, hidden_keys, attn.scaling, chunk)
        else:
            out = tree_rows_attention(q, keys, values, trees, attn.scaling)
        out = out.reshape(rows, self.kv_heads * groups, width, self.head_dim).transpose(1, 2)
        return block.o(out.reshape(rows, width, -1).to(x.dtype))  # from float32 attention

    # --- buffers --------------------------------------------------------------------------

    def _width(self, k: int) -> int | None:
        """The compiled width a block of k tokens pads to, or None to run it eagerly."""
        return next((w for w in self.widths if w >= k), None)

    def _reset(self, rows: int, length: int, reserve: int) -> None:
        """An empty cache with room for a `length`-token prompt and `reserve` more positions."""
        self.kv.clear()
        self._ensure_capacity(rows, length + (reserve if reserve > 0 else DEFAULT_RESERVE))

    def _ensure_capacity(self, rows: int, needed: int) -> None:
        """A cache of exactly `rows` rows and at least `needed` positions."""
        cache = self.cache
        if cache is not None and cache.rows == rows:
            if cache.capacity >= needed:
                return
            needed = max(needed, 2 * cache.capacity)  # doubling: few regrows, few recompiles
        self.kv.resize(rows, needed)

    def _allocate(self, rows: int, capacity: int) -> StaticKVCache:
        """The runner's new caches: compiled widths reuse their graphs on them."""
        cache = self.new_cache(rows, capacity)
        if self.steps:
            cache.mark_for_compile(cuda_graphs=self.device.type == "cuda")
        return cache

    def ensure_rotary(self, length: int) -> None:
        """Rotary tables for positions < length."""
        if self._cos.shape[0] < length:
            self._cos, self._sin = self._rotary_tables(length)

    @property
    def cache_dtype(self) -> torch.dtype:
        return CACHE_DTYPE

    def new_cache(self, rows: int, capacity: int) -> StaticKVCache:
        """An empty cache for this model's layers (capacity rounded up), rotary covered."""
        capacity = rounded_capacity(capacity)
        self.ensure_rotary(capacity)
        return StaticKVCache(len(self.layers), rows, self.kv_heads, self.head_dim, capacity,
                             CACHE_DTYPE, self.device)

    def _rotary_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [length, head_dim] from the model's own rotary module (any rope type)."""
        rotary = self.model.model.rotary_emb
        probe = torch.zeros(1, 1, self.head_dim, dtype=CACHE_DTYPE,
                            device=self.device)
        positions = torch.arange(length, device=self.device)[None]
        with torch.inference_mode():
            cos, sin = rotary(probe, positions)
        return cos[0], sin[0]

    def _compile(self, width: int) -> Callable[..., torch.Tensor]:
        """The compiled step for one width, on a code object of its own."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs
        return torch.compile(types.MethodType(step_function(width), self), mode=mode,
                             dynamic=False)

    def compiled_graphs(self) -> dict[int, int]:
        """Graphs dynamo holds for each width's step: one per distinct runner shape that ran
        it (a target, a drafter of other shapes); growing with calls means recompiles."""
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list

        return {w: len(_debug_get_cache_entry_list(step_function(w).__code__))
                for w in self.widths}


_STEPS: dict[int, Callable[..., torch.Tensor]] = {}


def step_function(width: int) -> Callable[..., torch.Tensor]:
    """StaticCausalLM._full on a code object of its own for this width. Dynamo stores compiled
    graphs on the code object and falls back to eager, silently, past `recompile_limit` (8)
    graphs per code object: one shared by every width of a target and of its drafter would
    pass it."""
    if width not in _STEPS:
        full = StaticCausalLM._full
        code = full.__code__.replace(co_name=f"_full_width_{width}")
        _STEPS[width] = types.FunctionType(code, full.__globals__, code.co_name,
                                           full.__defaults__, full.__closure__)
    return _STEPS[width]


@dataclass(frozen=True)
class Visibility:
    """What every layer's fused attention needs of one forward, built once: rotary tables
    [R|1, w, D], the slots written [R|1, w], and which keys each query sees (slots below
    `upto` [R|1, w]; with trees, also slot tree_start[r] + t where tree_mask[r, i, t])."""

    cos: torch.Tensor
    sin: torch.Tensor
    slots: torch.Tensor
    upto: torch.Tensor
    tree_mask: torch.Tensor | None = None
    tree_start: torch.Tensor | None = None

    @classmethod
    def of(cls, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           trees: list[TreeLayout] | None) -> Visibility:
        cos, sin = cos[:, 0].contiguous(), sin[:, 0].contiguous()
        if trees is None:  # a line: every key up to the query's own position
            return cls(cos, sin, positions, positions + 1)
        starts = torch.tensor([t.start for t in trees], device=positions.device)
        width = positions.shape[1]
        return cls(cos, sin, torch.stack([t.slots for t in trees]),
                   starts[:, None].expand(len(trees), width),
                   torch.stack([t.ancestors for t in trees]), starts)


class _Projections:
    """A decoder layer's products as the runner calls them: q/k/v (and gate/up) in one call
    each when they are packed together, the MLP written out where it is gated."""

    def __init__(self, qkv: Any, o: Any, mlp: Any):
        self.qkv, self.o, self.mlp = qkv, o, mlp

    @classmethod
    def of(cls, layer: Any) -> _Projections:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = stacked_parts(attn, ("q_proj", "k_proj", "v_proj"))
        gated = all(isinstance(getattr(mlp, name, None), torch.nn.Module)
                    for name in ("gate_proj", "up_proj", "down_proj")) and \
            isinstance(getattr(mlp, "act_fn", None), torch.nn.Module)
        if gated:
            gate_up, down, act = stacked_parts(mlp, ("gate_proj", "up_proj")), \
                single(mlp, "down_proj"), mlp.act_fn

            def run_mlp(x: torch.Tensor) -> torch.Tensor:
                gate, up = gate_up(x)
                return down(act(gate) * up)
        else:
            run_mlp = mlp
        return cls(qkv, single(attn, "o_proj"), run_mlp)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (rotate-half convention), x [B, H, T, D], cos/sin
    [B or 1, 1, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
