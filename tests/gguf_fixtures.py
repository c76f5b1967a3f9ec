"""Tiny GGUF files written with gguf-py's GGUFWriter, for the GGUF reader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize

Q = GGMLQuantizationType
# byte offsets of each format's float16 fields: random bytes there could be NaN or inf
F16_FIELDS = {Q.Q8_0: (0,), Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2),
              Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q2_K: (80, 82),
              Q.Q3_K: (108,)}
QUANTIZABLE = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)  # gguf-py can quantize these


def random_blocks(kind: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Valid random blocks [rows, bytes per row]: every bit random but the float16 scales,
    which are finite (some negative, some zero)."""
    block, size = GGML_QUANT_SIZES[kind]
    if cols % block or not cols:
        raise ValueError(f"{kind.name} needs a multiple of {block} inputs, not {cols}")
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for start in F16_FIELDS[kind]:
        scales = rng.normal(0, 0.05, size=(rows, cols // block)).astype(np.float16)
        scales[rng.random(scales.shape) < 0.05] = 0
        raw[..., start:start + 2] = scales[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


def encoded(kind: Q, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`weight` [rows, cols] as `kind`: quantized by gguf-py where it can, else random blocks
    of that shape (the weight's values are then not what the file holds)."""
    if kind in (Q.F32, Q.F16):
        return quantize(weight, kind)
    if kind in QUANTIZABLE:
        return quantize(weight, kind)
    return random_blocks(kind, *weight.shape, rng)


def byte_level_vocabulary(extra: list[str]) -> tuple[list[str], list[str]]:
    """A GPT-2 style byte-level BPE vocabulary: the 256 byte symbols, a few merges, then
    `extra` tokens (the special ones); returns (tokens, merges)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    symbols, n = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + n)
            n += 1
    tokens = [symbols[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    for merge in merges:
        tokens.append(merge.replace(" ", ""))
    return tokens + extra, merges


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def write_decoder(path: Path, arch: str, types: dict[str, Q], *, layers: int = 2,
                  hidden: int = 256, heads: int = 4, kv_heads: int = 2, intermediate: int = 256,
                  bias: bool = False, tied: bool = False, head_dim: int | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny llama/qwen2 GGUF with a byte-level tokenizer. `types` gives a GGUF type per
    tensor role ("attn_q", "ffn_down", "token_embd", ...; F32 where absent). Returns the
    float32 weights written for F32 tensors (keyed by GGUF name)."""
    rng = np.random.default_rng(seed)
    tokens, merges = byte_level_vocabulary(SPECIALS)
    vocab, head_dim = len(tokens), head_dim or hidden // heads
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - len(SPECIALS)) + [3] * len(SPECIALS))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab - 3)
    writer.add_eos_token_id(vocab - 1)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    shapes = {"token_embd": (vocab, hidden), "output_norm": (hidden,)}
    if not tied:
        shapes["output"] = (vocab, hidden)
    layer_shapes = {"attn_norm": (hidden,), "ffn_norm": (hidden,),
                    "attn_q": (heads * head_dim, hidden), "attn_k": (kv_heads * head_dim, hidden),
                    "attn_v": (kv_heads * head_dim, hidden),
                    "attn_output": (hidden, heads * head_dim),
                    "ffn_gate": (intermediate, hidden), "ffn_up": (intermediate, hidden),
                    "ffn_down": (hidden, intermediate)}
    if arch == "qwen3":
        layer_shapes |= {"attn_q_norm": (head_dim,), "attn_k_norm": (head_dim,)}
    if bias:
        layer_shapes |= {"attn_q.bias": (heads * head_dim,), "attn_k.bias": (kv_heads * head_dim,),
                         "attn_v.bias": (kv_heads * head_dim,)}
    for i in range(layers):
        shapes |= {f"blk.{i}.{role}": shape for role, shape in layer_shapes.items()}
    written = {}
    for key, shape in shapes.items():
        name = key if key.endswith(".bias") else f"{key}.weight"
        role = key.split(".")[-1] if key.startswith("blk.") else key
        kind = types.get(role, Q.F32) if len(shape) == 2 else Q.F32
        weight = rng.normal(0, 0.1, size=shape).astype(np.float32)
        if kind == Q.F32:
            writer.add_tensor(name, weight)
            written[name] = weight
        else:
            writer.add_tensor(name, encoded(kind, weight, rng), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written
