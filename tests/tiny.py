"""Tiny random-weight models built from configs in memory, for fast tests."""

from __future__ import annotations

import copy

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from specdec.runtime.packing import unpack_decoder


def tiny_llama(vocab_size: int = 64, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).float().eval()
    _sharpen(model)
    return model


def small_decoder(kind: str = "qwen2", dtype: torch.dtype = torch.bfloat16, vocab_size: int = 96,
                  seed: int = 0, intermediate: int = 2048) -> torch.nn.Module:
    """A two-layer llama or qwen2 (q/k/v biases) with a wide MLP: oneDNN's single-row product
    rounds differently from its multi-row one from about 2,048 inputs, so numerics tests on it
    can fail. Logits unsharpened: near-ties occur."""
    torch.manual_seed(seed)
    shape = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=intermediate,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=1024, bos_token_id=None, eos_token_id=None,
                 pad_token_id=None, tie_word_embeddings=False)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, use_sliding_window=False))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.to(dtype).eval()


def tiny_t5(vocab_size: int = 64, seed: int = 0, sharpen: bool = True,
            ) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=None,
                      tie_word_embeddings=False)
    model = T5ForConditionalGeneration(config).float().eval()
    if not sharpen:
        return model
    with torch.no_grad():
        # T5 ties lm_head to the input embeddings, which then dominate the residual stream and
        # every token predicts itself: shrink the embeddings, sharpen at the final norm instead
        model.shared.weight.mul_(0.05)
        model.decoder.final_layer_norm.weight.mul_(400.0)
    return model


def perturbed(model: torch.nn.Module, noise: float, seed: int = 1) -> torch.nn.Module:
    """A copy of model with Gaussian noise on every weight: a drafter that mostly agrees.
    (A model packed by a runner is copied with plain linear layers again.)"""
    clone = copy.deepcopy(model)
    unpack_decoder(clone)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in clone.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * noise * param.std())
    return clone


def _sharpen(model: torch.nn.Module) -> None:
    # default init gives near-uniform logits; scale the output layer so distributions vary
    # and greedy argmaxes are clear (no near-ties to flip)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)


def low_bit(model: torch.nn.Module, name: str = "low-bit"):
    """`model` (a transformers llama/qwen2) as the low-bit runner runs a GGUF: every linear
    layer and the embedding quantized to int8 per 32 inputs, norms and biases as they are."""
    from specdec.runtime.group_weights import GroupQuantized
    from specdec.runtime.low_bit_decoder import DecoderConfig, build_decoder
    from specdec.runtime.static import StaticCausalLM

    config = model.config
    tensors = {name: GroupQuantized.from_float(p) if p.dim() == 2 else p.detach().float()
               for name, p in model.state_dict().items()}
    rope = getattr(config, "rope_parameters", None) or {}
    shape = DecoderConfig(
        config.model_type, config.vocab_size, config.hidden_size, config.intermediate_size,
        config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
        config.hidden_size // config.num_attention_heads, config.rms_norm_eps,
        rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)),
        config.max_position_embeddings, tie_word_embeddings=config.tie_word_embeddings)
    return StaticCausalLM(build_decoder(shape, tensors), None, name, pack=False)
