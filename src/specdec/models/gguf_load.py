"""A GGUF as the low-bit runner runs it: its integer blocks as stored, no dequantized copy.

The file is memory-mapped; each quantized weight becomes `GroupQuantized` without rounding
anything (runtime/group_weights.py), the products compute with exactly the GGUF's weights,
and the tokenizer comes from a verified cache (models/gguf_tokenizer.py), so neither
transformers' modeling code nor a converted bf16 copy is read.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from specdec.errors import ModelLoadError
from specdec.models.gguf_file import GGUFFile
from specdec.models.gguf_model import (
    GGUFDecoderConfig,
    GGUFDecoderSpec,
    load_weights,
    read_decoder_spec,
)
from specdec.models.gguf_tokenizer import load_gguf_tokenizer
from specdec.runtime.low_bit_decoder import DecoderConfig, build_decoder
from specdec.runtime.static import StaticCausalLM


@dataclass(frozen=True)
class LowBitSource:
    """A GGUF the low-bit runner runs, opened and its decoder spec read once."""

    path: Path
    file: GGUFFile
    spec: GGUFDecoderSpec


def open_low_bit(path: Path) -> LowBitSource | str:
    """The GGUF opened for the low-bit runner, or why the runner cannot run it."""
    try:
        file = GGUFFile(path)
        spec = read_decoder_spec(file)
    except ModelLoadError as error:
        return str(error)
    if spec.config.rope_scaling is not None:
        return f"rotary scaling {spec.config.rope_scaling.get('type')!r}"
    return LowBitSource(path, file, spec)


def load_low_bit(source: LowBitSource, name: str, sha256: str | None = None) -> StaticCausalLM:
    """The static runner over the GGUF's own blocks; its tokenizer from the verified cache
    (sha256: the file's, when the caller has verified it; else computed or remembered)."""
    file, spec = source.file, source.spec
    # the tokenizer (mostly Python) loads while the weights are decoded and packed (compiled
    # ops that leave the interpreter free): start-up pays for the longer of the two
    with ThreadPoolExecutor(max_workers=1) as pool:
        tokenizer = pool.submit(load_gguf_tokenizer, source.path, sha256)
        eos = file.metadata("tokenizer.ggml.eos_token_id")
        config = _decoder_config(spec.config, name, () if eos is None else (int(eos),))
        decoder = build_decoder(config, load_weights(file, spec))
        tokenizer = tokenizer.result()
    return StaticCausalLM(decoder, tokenizer, name, pack=False)


def _decoder_config(config: GGUFDecoderConfig, name: str, eos: tuple[int, ...]
                    ) -> DecoderConfig:
    return DecoderConfig(
        model_type=config.architecture, vocab_size=config.vocab_size,
        hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads, head_dim=config.head_dim,
        rms_norm_eps=config.rms_eps, rope_theta=config.rope_theta,
        max_position_embeddings=config.context_length,
        tie_word_embeddings=config.tied_embeddings,
        eos_token_ids=eos, name_or_path=name)
