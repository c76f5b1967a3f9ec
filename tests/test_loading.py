"""load_model: GGUF written here with the gguf package, safetensors dirs, refused pickles."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from server_support import save_tiny_model
from specdec import SamplingParams, SpeculativeDecoder
from specdec.errors import ModelLoadError
from specdec.models import load_model
from specdec.models.loading import resolve_dtype
from tiny import tiny_llama

HEADS, KV_HEADS = 4, 2


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf), which transformers undoes on load."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_tiny_gguf(path: Path, model: torch.nn.Module) -> Path:
    """A llama GGUF (float32 tensors) of `model` with a byte-level BPE tokenizer."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    # 256 byte tokens in GPT-2's byte alphabet, two merges and an end-of-text control token
    tokens = list(bytes_to_unicode().values())
    tokens = tokens[: config.vocab_size - 3] + ["a" + "b", "ab" + "c", "<|end|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges(["a b", "ab c"])
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_bos_token_id(len(tokens) - 1)
    for name, tensor in _gguf_tensors(model):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_tensors(model: torch.nn.Module):
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(model.config.num_hidden_layers):
        for hf, gg in names.items():
            weight = state[f"model.layers.{layer}.{hf}.weight"]
            if gg == "attn_q":
                weight = _permute(weight, HEADS)
            elif gg == "attn_k":
                weight = _permute(weight, KV_HEADS)
            yield f"blk.{layer}.{gg}.weight", weight
    yield "output_norm.weight", state["model.norm.weight"]
    yield "output.weight", state["lm_head.weight"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    model = tiny_llama(vocab_size=259, layers=2)
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model), model


def test_gguf_loads_with_the_same_logits_and_its_tokenizer(tiny_gguf):
    path, reference = tiny_gguf
    model = load_model(path, dtype="float32")
    assert model.vocab_size == 259 and model.name == "tiny.gguf"
    ids = torch.tensor([[5, 77, 200, 3, 258, 12]])
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    model.prefill(ids[:, :1])
    torch.testing.assert_close(model.extend(ids), expected, atol=1e-4, rtol=1e-4)
    tokenizer = model.tokenizer
    assert tokenizer.decode(tokenizer("abc xyz").input_ids) == "abc xyz"
    assert tokenizer.convert_tokens_to_ids("abc") in tokenizer("abc").input_ids  # merges used


def test_gguf_model_decodes_speculatively_like_plain(tiny_gguf):
    model = load_model(tiny_gguf[0], dtype="float32")
    params = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)
    plain = SpeculativeDecoder(model, None).generate("abc abc", params)
    spec = SpeculativeDecoder(model, load_model(tiny_gguf[0], dtype="float32"), 3)
    assert spec.generate("abc abc", params).tokens == plain.tokens


def test_safetensors_directory_loads(tmp_path):
    save_tiny_model(tmp_path, layers=1)
    model = load_model(str(tmp_path), dtype="bfloat16", threads=1)
    assert model.model.dtype == torch.bfloat16
    assert model.tokenizer.decode(model.tokenizer("hi!").input_ids, skip_special_tokens=True) \
        == "hi!"


def test_pickled_weights_are_refused_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickled weights.*arbitrary code"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="pickled"):
        load_model(tmp_path / "pytorch_model.bin")
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="pickled"):
        load_model(weights)


def test_bad_specs_are_model_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'gpt-17'.*qwen2.5-coder-0.5b"):
        load_model("gpt-17")
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match="no such model file or directory"):
        load_model("./nowhere/model")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(garbage)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 8)
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(truncated)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_model(tmp_path / "empty")


def test_dtype_and_threads_are_validated():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype(None) in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int3")
    with pytest.raises(ValueError, match="threads"):
        load_model("gpt-17", threads=0)


@pytest.mark.real
def test_gemma3_rolls_back_past_its_sliding_window():
    """Gemma 3's sliding-window layers (window 512) must crop after the window filled up.

    Greedy in float32: speculative decoding with rollbacks beyond 512 tokens of context must
    equal plain decoding and transformers' own generate.
    """
    from specdec.drafters.ngram import NgramDrafter

    model = load_model("gemma3-270m", dtype="float32")
    window = model.model.config.sliding_window
    prompt = "\n".join(f"value_{i} = compute({i}, {i * 7 % 13})" for i in range(60))
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    assert ids.shape[1] > window
    params = SamplingParams(temperature=0, max_new_tokens=96, ignore_eos=True)
    spec = SpeculativeDecoder(model, NgramDrafter(), 4).generate(ids[0].tolist(), params)
    assert spec.stats.accepted > 0 and spec.stats.accepted < spec.stats.drafted  # rollbacks
    plain = SpeculativeDecoder(model, None).generate(ids[0].tolist(), params)
    assert spec.tokens == plain.tokens
    with torch.no_grad():
        reference = model.model.generate(ids, max_new_tokens=96, do_sample=False,
                                          min_new_tokens=96)[0, ids.shape[1]:].tolist()
    assert plain.tokens == reference
