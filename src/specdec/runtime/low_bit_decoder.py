"""A llama-family decoder whose linear layers compute with group-quantized integer weights.

The module tree has the layout the static runner reads from a transformers model (embedding,
layers with q/k/v/o and gate/up/down, norms, rotary tables, output head), so the one runner
(runtime/static.py) runs it for single rows, batch rows, trees and drafters alike. It is built
from plain tensors (a GGUF's blocks as stored, `GroupQuantized`) without transformers'
modeling code, which takes seconds to import. Everything besides the products (embedding,
norms, rotary, attention) computes in float32: row by row, so any row of a block is the same
bits as that token alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from specdec.runtime.group_linear import GroupLinear
from specdec.runtime.group_weights import GroupQuantized
from specdec.runtime.kernels import fused_ops_available
from specdec.runtime.linear import StackedSlice

LOW_BIT_ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral")
Tensors = Mapping[str, "GroupQuantized | torch.Tensor"]


@dataclass(frozen=True)
class DecoderConfig:
    """The numbers a llama-family decoder is made of (transformers' config names)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = ()
    name_or_path: str = ""
    # what the static runner's support check reads; a GGUF decoder has none of these
    is_encoder_decoder: bool = field(default=False, init=False)
    use_sliding_window: bool = field(default=False, init=False)
    layer_types: None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.model_type not in LOW_BIT_ARCHITECTURES:
            raise ValueError(f"architecture {self.model_type!r}: the low-bit decoder runs "
                             f"{', '.join(LOW_BIT_ARCHITECTURES)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} query heads do not share "
                             f"{self.num_key_value_heads} key heads evenly")


class RMSNorm(nn.Module):
    """x / rms(x) * weight, in float32 (one fused op where the kernels are compiled)."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.float(), requires_grad=False)
        self.eps = eps
        self.fused = fused_ops_available()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.fused:
            return torch.ops.specdec.rms_norm(x, self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rotary(nn.Module):
    """cos and sin tables of the default (unscaled) rotary embedding, rotate-half layout."""

    rope_type = "default"

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.inv_freq = 1.0 / (theta ** exponents)

    def forward(self, x: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(x.device)
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


class GroupEmbedding(nn.Module):
    """Token embedding over a group-quantized table: the looked-up rows are dequantized."""

    def __init__(self, table: GroupQuantized | torch.Tensor):
        super().__init__()
        self.table = table
        self.num_embeddings, self.embedding_dim = (int(n) for n in table.shape)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.table, GroupQuantized):
            return self.table.rows(ids)
        return self.table[ids].float()


class BiasedLinear(nn.Module):
    """A group-quantized product plus a float32 bias (Qwen2's q/k/v)."""

    def __init__(self, product: GroupLinear, bias: torch.Tensor):
        super().__init__()
        self.product = product
        self.bias_tensor = bias.float()
        self.in_features, self.out_features = product.in_features, product.out_features
        self.splits = product.splits

    @property
    def bytes(self) -> int:
        return self.product.bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x) + self.bias_tensor

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(self(x), self.splits, dim=-1)


class Attention(nn.Module):
    """q/k/v (one stacked product, slices where transformers has layers) and o."""

    def __init__(self, qkv: nn.Module, o: GroupLinear, head_dim: int,
                 q_norm: RMSNorm | None, k_norm: RMSNorm | None):
        super().__init__()
        self.qkv = qkv
        self.q_proj, self.k_proj, self.v_proj = (StackedSlice(qkv, i) for i in range(3))
        self.o_proj = o
        self.head_dim = head_dim
        self.scaling = head_dim ** -0.5
        if q_norm is not None and k_norm is not None:  # Qwen3: RMSNorm per head
            self.q_norm, self.k_norm = q_norm, k_norm


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up as one stacked product."""

    def __init__(self, gate_up: GroupLinear, down: GroupLinear):
        super().__init__()
        self.gate_up = gate_up
        self.gate_proj, self.up_proj = StackedSlice(gate_up, 0), StackedSlice(gate_up, 1)
        self.down_proj = down
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up.parts(x)
        return self.down_proj(self.act_fn(gate) * up)


class Layer(nn.Module):
    def __init__(self, attention: Attention, mlp: MLP, input_norm: RMSNorm,
                 post_norm: RMSNorm):
        super().__init__()
        self.self_attn, self.mlp = attention, mlp
        self.input_layernorm, self.post_attention_layernorm = input_norm, post_norm


class LowBitDecoder(nn.Module):
    """The decoder as the static runner reads it: `.model` (embed_tokens, layers, norm,
    rotary_emb), `get_output_embeddings()`, `config`, `generation_config`."""

    def __init__(self, config: DecoderConfig, embed: GroupEmbedding, layers: list[Layer],
                 norm: RMSNorm, head: nn.Module):
        super().__init__()
        self.config = config
        self.generation_config = SimpleNamespace(eos_token_id=list(config.eos_token_ids) or None)
        self.model = nn.Module()
        self.model.embed_tokens = embed
        self.model.layers = nn.ModuleList(layers)
        self.model.norm = norm
        self.model.rotary_emb = Rotary(config.head_dim, config.rope_theta)
        self.lm_head = head

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @property
    def dtype(self) -> str:
        """What the weights are, as `--dtype` names it (reports print it)."""
        return "gguf"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a LowBitDecoder runs through the static runner "
                                  "(specdec.runtime.static.StaticCausalLM)")

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one step reads: every product once, the head included."""
        products = {id(m): m for m in self.modules() if isinstance(m, GroupLinear)}
        return sum(m.bytes for m in products.values())


def build_decoder(config: DecoderConfig, tensors: Tensors) -> LowBitDecoder:
    """A LowBitDecoder from tensors under transformers' names ("model.layers.0.self_attn.
    q_proj.weight", ...): products as GroupQuantized, norms and biases as float tensors."""

    def get(name: str) -> Any:
        if name not in tensors:
            raise KeyError(f"the weights have no {name!r}")
        return tensors[name]

    def norm(name: str) -> RMSNorm:
        return RMSNorm(get(name), config.rms_norm_eps)

    layers = []
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        attn = prefix + "self_attn."
        names = [f"{attn}{p}_proj" for p in "qkv"]
        qkv: nn.Module = GroupLinear([get(n + ".weight") for n in names])
        if f"{names[0]}.bias" in tensors:
            qkv = BiasedLinear(qkv, torch.cat([get(n + ".bias") for n in names]))
        q_norm = norm(attn + "q_norm.weight") if attn + "q_norm.weight" in tensors else None
        k_norm = norm(attn + "k_norm.weight") if attn + "k_norm.weight" in tensors else None
        attention = Attention(qkv, GroupLinear([get(attn + "o_proj.weight")]),
                              config.head_dim, q_norm, k_norm)
        mlp = prefix + "mlp."
        gate_up = GroupLinear([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")])
        layers.append(Layer(attention, MLP(gate_up, GroupLinear([get(mlp + "down_proj.weight")])),
                            norm(prefix + "input_layernorm.weight"),
                            norm(prefix + "post_attention_layernorm.weight")))
    table = get("model.embed_tokens.weight")
    head_weight = table if config.tie_word_embeddings else get("lm_head.weight")
    if not isinstance(head_weight, GroupQuantized):
        raise TypeError("the output head must be group-quantized (lm_head.weight)")
    return LowBitDecoder(config, GroupEmbedding(table), layers, norm("model.norm.weight"),
                         GroupLinear([head_weight]))
