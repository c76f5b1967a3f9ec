"""The decoder spec of tiny llama/qwen2 GGUFs, checked against transformers' GGUF loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.quants import dequantize

from gguf_fixtures import Q, write_decoder
from specdec.errors import ModelLoadError
from specdec.models.gguf_file import GGUFFile
from specdec.models.gguf_model import (
    load_dense,
    load_quantized,
    load_weights,
    read_decoder_spec,
    unpermute_rows,
)
from specdec.runtime.group_weights import GroupQuantized

# mixed formats so that un-permuting quantized rows (values, scales and mins) is exercised
TYPES = {"attn_q": Q.Q8_0, "attn_k": Q.Q4_1, "attn_v": Q.Q5_0, "ffn_down": Q.Q4_K,
         "ffn_up": Q.Q6_K, "token_embd": Q.Q5_1}


def _spec(tmp_path: Path, arch: str, **kwargs) -> tuple[GGUFFile, object]:
    write_decoder(tmp_path / "tiny.gguf", arch, TYPES, **kwargs)
    file = GGUFFile(tmp_path / "tiny.gguf")
    return file, read_decoder_spec(file)


def test_config_numbers_of_a_tiny_qwen2(tmp_path: Path) -> None:
    _, spec = _spec(tmp_path, "qwen2", layers=3, hidden=256, heads=8, kv_heads=2,
                    intermediate=256, bias=True, tied=True)
    c = spec.config
    assert (c.architecture, c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim,
            c.intermediate, c.context_length, c.vocab_size) == (
        "qwen2", 3, 256, 8, 2, 32, 256, 256, 264)
    assert c.rms_eps == pytest.approx(1e-6) and c.rope_theta == 10000.0
    assert c.tied_embeddings and c.attention_bias and not c.qk_norm
    assert c.rope_scaling is None
    assert "lm_head.weight" not in spec.tensors
    assert spec.ref("model.layers.2.self_attn.k_proj.bias").shape == (64,)
    assert spec.ref("model.layers.0.mlp.up_proj.weight").shape == (256, 256)
    assert spec.ref("model.layers.0.self_attn.k_proj.weight").shape == (64, 256)  # [out, in]
    assert all(ref.permuted_heads is None for ref in spec.tensors.values())


def test_llama_q_and_k_are_marked_permuted(tmp_path: Path) -> None:
    _, spec = _spec(tmp_path, "llama", heads=4, kv_heads=2)
    assert not spec.config.tied_embeddings and not spec.config.attention_bias
    assert spec.ref("model.layers.1.self_attn.q_proj.weight").permuted_heads == 4
    assert spec.ref("model.layers.1.self_attn.k_proj.weight").permuted_heads == 2
    assert spec.ref("model.layers.1.self_attn.v_proj.weight").permuted_heads is None
    with pytest.raises(ModelLoadError, match="no tensor"):
        spec.ref("model.layers.9.self_attn.q_proj.weight")


def test_unpermute_rows_inverts_llama_cpp_permutation() -> None:
    heads, rows = 3, 24
    original = torch.arange(rows)
    # llama.cpp's converter: reshape(heads, 2, half).swapaxes(1, 2)
    permuted = original.reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)
    assert torch.equal(permuted[unpermute_rows(heads, rows)], original)
    assert not torch.equal(permuted, original)


def test_quantized_rows_are_unpermuted_with_their_scales(tmp_path: Path) -> None:
    file, spec = _spec(tmp_path, "llama")
    ref = spec.ref("model.layers.0.self_attn.k_proj.weight")
    weight = load_quantized(file, ref)
    assert weight.mins is not None  # Q4_1: the mins move with their rows
    in_file = torch.from_numpy(dequantize(file.raw(ref.gguf_name), ref.type))
    order = unpermute_rows(ref.permuted_heads, ref.shape[0])
    assert torch.equal(weight.dequantize(), in_file[order])
    assert not torch.equal(weight.dequantize(), in_file)


def test_load_weights_gives_matrices_quantized_and_vectors_dense(tmp_path: Path) -> None:
    file, spec = _spec(tmp_path, "qwen2", bias=True, layers=1)
    weights = load_weights(file, spec)
    assert set(weights) == set(spec.tensors)
    for name, weight in weights.items():
        ref = spec.ref(name)
        if len(ref.shape) == 2:
            assert isinstance(weight, GroupQuantized) and weight.shape == ref.shape
            dense = load_dense(file, ref)
            if ref.type == Q.F32:  # requantized: int8 per 32, within half a step
                step = weight.scales.repeat_interleave(32, dim=1)
                assert bool(((weight.dequantize() - dense).abs() <= step / 2 + 1e-7).all())
            else:
                assert torch.equal(weight.dequantize(), dense)
        else:
            assert weight.dtype == torch.float32 and weight.shape == ref.shape
    # float matrices (F32 in this file) are the only ones requantized
    assert weights["model.layers.0.self_attn.o_proj.weight"].group == 32
    assert weights["model.layers.0.mlp.up_proj.weight"].group == 16  # Q6_K


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_every_tensor_matches_transformers_gguf_loading(tmp_path: Path, arch: str) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    # qwen3 heads are wider than hidden / heads (Qwen3-0.6B: 16 x 128 in 1024); transformers
    # reads no head size from a qwen3 GGUF and assumes Qwen3Config's 128
    file, spec = _spec(tmp_path, arch, bias=arch == "qwen2",
                       head_dim=128 if arch == "qwen3" else None)
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf",
                                                     dtype=torch.float32)
    finally:
        logging.set_verbosity(level)
    state = model.state_dict()
    assert set(spec.tensors) == set(state)
    for name, ref in spec.tensors.items():
        assert torch.equal(load_dense(file, ref), state[name]), name
    config = model.config
    assert (spec.config.layers, spec.config.hidden, spec.config.heads, spec.config.kv_heads,
            spec.config.intermediate, spec.config.vocab_size) == (
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
        config.num_key_value_heads, config.intermediate_size, config.vocab_size)
    # transformers' Qwen2Config has no head_dim: it derives it from the hidden size
    head_dim = (config.hidden_size // config.num_attention_heads if arch == "qwen2"
                else config.head_dim)
    assert spec.config.head_dim == head_dim
    assert np.isclose(spec.config.rms_eps, config.rms_norm_eps)


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(tmp_path / "other.gguf"), "gemma3")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="gemma3"):
        read_decoder_spec(GGUFFile(tmp_path / "other.gguf"))


def test_metadata_that_contradicts_the_tensors_is_refused(tmp_path: Path) -> None:
    write_decoder(tmp_path / "tiny.gguf", "qwen2", {}, heads=4)
    file = GGUFFile(tmp_path / "tiny.gguf")
    # head size 32 where the file has 64: q still has 8 x 32 rows, k (2 heads) does not
    file._values["qwen2.attention.head_count"] = 8
    with pytest.raises(ModelLoadError, match="attn_k.weight is of shape"):
        read_decoder_spec(file)
