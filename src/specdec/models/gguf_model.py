"""A decoder-only GGUF (llama, qwen2, qwen3) read as a config plus HF-named tensors.

`read_decoder_spec` turns the file's metadata into a `GGUFDecoderConfig` and maps every
tensor to the name transformers gives it (blk.3.attn_q.weight ->
model.layers.3.self_attn.q_proj.weight), without transformers. `load_quantized` and
`load_dense` read one tensor; both undo llama.cpp's q/k row permutation for llama models.

llama.cpp's converter permutes the rows of q and k of llama-architecture models (it turns
transformers' rotate-half rotary layout into ggml's interleaved one); qwen2/qwen3 are not
permuted. Undoing it is a row permutation, so it applies to quantized rows (values, scales
and mins together) without touching a number, as transformers' own GGUF loader
(LlamaTensorProcessor) does on floats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from gguf.constants import GGMLQuantizationType

from specdec.errors import ModelLoadError
from specdec.models.gguf_blocks import FLOAT_TYPES, decode_float, group_quantized
from specdec.models.gguf_file import GGUFFile
from specdec.runtime.group_weights import GroupQuantized

ARCHITECTURES = ("llama", "qwen2", "qwen3")
PERMUTED_QK = frozenset({"llama"})  # architectures whose q/k rows llama.cpp permutes

_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
           "output_norm.weight": "model.norm.weight"}
_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")


@dataclass(frozen=True)
class GGUFDecoderConfig:
    """The numbers a decoder runner needs, as the GGUF states them."""

    architecture: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rms_eps: float
    rope_theta: float
    context_length: int
    vocab_size: int
    tied_embeddings: bool  # no output.weight: the embedding doubles as the output layer
    attention_bias: bool  # q/k/v have biases (qwen2)
    qk_norm: bool  # per-head RMS norm of q and k (qwen3)
    # GGUF's {arch}.rope.scaling.* keys without the prefix: {"type": "yarn", "factor": 4.0, ...}
    rope_scaling: dict[str, Any] | None = None


@dataclass(frozen=True)
class GGUFTensorRef:
    """Where an HF-named tensor lies in the file, and how to read it."""

    gguf_name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # [out, in] for weights, transformers' layout
    permuted_heads: int | None = None  # heads whose rows llama.cpp interleaved (llama q/k)


@dataclass(frozen=True)
class GGUFDecoderSpec:
    config: GGUFDecoderConfig
    tensors: dict[str, GGUFTensorRef] = field(default_factory=dict)  # keyed by HF name

    def ref(self, name: str) -> GGUFTensorRef:
        if name not in self.tensors:
            raise ModelLoadError(f"the GGUF has no tensor for {name!r}")
        return self.tensors[name]


def _number(file: GGUFFile, key: str, default: Any = None) -> Any:
    value = file.metadata(key, default)
    if value is None:
        raise ModelLoadError(f"{file.path}: metadata {key} is missing")
    return value


def _rope_scaling(file: GGUFFile, arch: str) -> dict[str, Any] | None:
    prefix = f"{arch}.rope.scaling."
    kind = file.metadata(prefix + "type")
    if kind in (None, "none"):
        return None
    scaling = {"type": kind}
    for key in file.metadata_keys():
        if key.startswith(prefix) and key != prefix + "type":
            scaling[key[len(prefix):]] = file.metadata(key)
    return scaling


def read_decoder_spec(file: GGUFFile) -> GGUFDecoderSpec:
    """The config and HF-named tensor map of a llama/qwen2/qwen3 GGUF."""
    arch = file.metadata("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{file.path}: architecture {arch!r} is not one of "
                             f"{ARCHITECTURES}")
    heads = int(_number(file, f"{arch}.attention.head_count"))
    hidden = int(_number(file, f"{arch}.embedding_length"))
    if "token_embd.weight" not in file.tensors:
        raise ModelLoadError(f"{file.path}: no token_embd.weight")
    config = GGUFDecoderConfig(
        architecture=arch,
        layers=int(_number(file, f"{arch}.block_count")),
        hidden=hidden,
        heads=heads,
        kv_heads=int(_number(file, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_number(file, f"{arch}.attention.key_length", hidden // heads)),
        intermediate=int(_number(file, f"{arch}.feed_forward_length")),
        rms_eps=float(_number(file, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_number(file, f"{arch}.rope.freq_base", 10000.0)),
        context_length=int(_number(file, f"{arch}.context_length")),
        vocab_size=file.tensors["token_embd.weight"].shape[0],
        tied_embeddings="output.weight" not in file.tensors,
        attention_bias="blk.0.attn_q.bias" in file.tensors,
        qk_norm="blk.0.attn_q_norm.weight" in file.tensors,
        rope_scaling=_rope_scaling(file, arch))
    tensors = {}
    for name, info in file.tensors.items():
        hf_name, permuted = _hf_name(name, config)
        if hf_name is not None:
            tensors[hf_name] = GGUFTensorRef(name, info.type, info.shape, permuted)
    _check_shapes(file, config)
    return GGUFDecoderSpec(config, tensors)


def _check_shapes(file: GGUFFile, config: GGUFDecoderConfig) -> None:
    """The metadata must describe the tensors: a wrong head size would run silently wrong."""
    expected = {"blk.0.attn_q.weight": (config.heads * config.head_dim, config.hidden),
                "blk.0.attn_k.weight": (config.kv_heads * config.head_dim, config.hidden),
                "blk.0.ffn_down.weight": (config.hidden, config.intermediate),
                f"blk.{config.layers - 1}.attn_norm.weight": (config.hidden,)}
    for name, shape in expected.items():
        info = file.tensors.get(name)
        if info is None or info.shape != shape:
            found = "missing" if info is None else f"of shape {list(info.shape)}"
            raise ModelLoadError(f"{file.path}: {name} is {found}; the metadata implies "
                                 f"{list(shape)}")


def _hf_name(name: str, config: GGUFDecoderConfig) -> tuple[str | None, int | None]:
    """transformers' name for a GGUF tensor (None for tensors a decoder does not use, such
    as rope_freqs), and the head count its rows are permuted by, if any."""
    if name in _GLOBAL:
        return _GLOBAL[name], None
    match = _LAYER_NAME.fullmatch(name)
    if match is None or match.group(2) not in _LAYER:
        return None, None
    layer, part, kind = match.groups()
    permuted = None
    if config.architecture in PERMUTED_QK:
        permuted = {"attn_q": config.heads, "attn_k": config.kv_heads}.get(part)
    return f"model.layers.{layer}.{_LAYER[part]}.{kind}", permuted


def unpermute_rows(heads: int, rows: int) -> torch.Tensor:
    """Row order undoing llama.cpp's q/k permutation: row h*2d + t*d + j of the result is
    row h*2d + 2j + t of the file (d = half the head size), as transformers'
    LlamaTensorProcessor._reverse_permute_weights computes it."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, half, 2).transpose(1, 2).reshape(-1)


def load_quantized(file: GGUFFile, ref: GGUFTensorRef) -> GroupQuantized:
    """A 2D weight as `GroupQuantized` (block formats exactly; float ones requantized)."""
    weight = group_quantized(ref.type, file.raw(ref.gguf_name), ref.shape)
    if ref.permuted_heads is None:
        return weight
    order = unpermute_rows(ref.permuted_heads, ref.shape[0])
    mins = None if weight.mins is None else weight.mins[order]
    return GroupQuantized(weight.values[order], weight.scales[order], mins, weight.group)


def load_dense(file: GGUFFile, ref: GGUFTensorRef) -> torch.Tensor:
    """Any tensor in float32 (norms and biases; quantized weights dequantized exactly)."""
    if ref.type in FLOAT_TYPES:
        tensor = decode_float(ref.type, file.raw(ref.gguf_name), ref.shape)
        if ref.permuted_heads is not None:
            tensor = tensor[unpermute_rows(ref.permuted_heads, ref.shape[0])]
        return tensor
    return load_quantized(file, ref).dequantize()


def load_weights(file: GGUFFile, spec: GGUFDecoderSpec) -> dict[str, GroupQuantized | torch.Tensor]:
    """Every tensor by HF name: matrices (embedding and lm_head included) as `GroupQuantized`,
    vectors (norms, biases) as float32."""
    return {name: load_quantized(file, ref) if len(ref.shape) == 2 else load_dense(file, ref)
            for name, ref in spec.tensors.items()}
