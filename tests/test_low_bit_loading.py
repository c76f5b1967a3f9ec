"""Loading a GGUF into the low-bit runner: the weights as stored, the default by measurement."""

from pathlib import Path

import pytest
import torch
from gguf.constants import GGMLQuantizationType as Q

from gguf_fixtures import write_decoder
from specdec import SamplingParams, SpeculativeDecoder
from specdec.errors import UsageError
from specdec.models.loading import load_model
from specdec.runtime import low_bit_choice
from specdec.runtime.low_bit_choice import LowBitVerdict
from specdec.runtime.low_bit_decoder import LowBitDecoder

# the default model's block formats: Q5_0 / Q8_0 matrices, Q6_K and Q4_K down projections
TYPES = {"attn_q": Q.Q8_0, "attn_k": Q.Q8_0, "attn_v": Q.Q5_0, "attn_output": Q.Q5_0,
         "ffn_gate": Q.Q5_0, "ffn_up": Q.Q5_0, "ffn_down": Q.Q8_0, "token_embd": Q.Q5_0,
         "output": Q.Q8_0}
FASTER = LowBitVerdict((1.0, 2.0), (3.0, 4.0), "bfloat16 prepacked", "portable")
SLOWER = LowBitVerdict((5.0, 6.0), (3.0, 4.0), "bfloat16 prepacked", "portable")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "cache"))  # tokenizer copies


def _tiny(tmp_path: Path, arch: str, **shape) -> Path:
    path = tmp_path / f"{arch}.gguf"
    write_decoder(path, arch, TYPES, **shape)
    return path


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.prefill(ids[:, :1])
    return model.extend(ids)


@pytest.mark.parametrize(("arch", "shape"), [("qwen2", {"bias": True}), ("llama", {})])
def test_the_low_bit_runner_computes_the_gguf_model(tmp_path, arch, shape):
    """Its logits follow transformers' dequantized load of the same file within the error
    of int8 activations, and its top tokens agree: the blocks are read exactly and the
    llama q/k permutation is undone."""
    path = _tiny(tmp_path, arch, **shape)
    low = load_model(path, dtype="gguf")
    assert isinstance(low.model, LowBitDecoder) and low.model.dtype == "gguf"
    reference = load_model(path, dtype="float32", convert=False, pack=False)
    ids = torch.randint(0, low.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    ours, theirs = _logits(low, ids), _logits(reference, ids)
    assert (ours - theirs).abs().amax() < 0.05 * theirs.abs().amax()
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9
    assert low.eos_token_ids == reference.eos_token_ids
    assert low.tokenizer.get_vocab() == reference.tokenizer.get_vocab()


def test_a_loaded_gguf_decodes_speculatively_like_plain(tmp_path):
    low = load_model(_tiny(tmp_path, "qwen2"), dtype="gguf")
    params = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    prompt = "the cat sat in a hat the cat"
    plain = SpeculativeDecoder(low, None).generate(prompt, params)
    from specdec.drafters.factory import build_drafter

    for spec in ("ngram", "suffix"):
        got = SpeculativeDecoder(low, build_drafter(spec, low, None), gamma=4).generate(
            prompt, params)
        assert got.tokens == plain.tokens


def test_auto_picks_the_low_bit_runner_only_where_it_measured_faster(tmp_path, monkeypatch):
    path = _tiny(tmp_path, "qwen2")
    monkeypatch.setattr(low_bit_choice, "low_bit_verdict", lambda: FASTER)
    assert isinstance(load_model(path).model, LowBitDecoder)
    monkeypatch.setattr(low_bit_choice, "low_bit_verdict", lambda: SLOWER)
    assert not isinstance(load_model(path, convert=False).model, LowBitDecoder)
    monkeypatch.setattr(low_bit_choice, "low_bit_verdict", lambda: FASTER)
    assert not isinstance(load_model(path, dtype="float32", convert=False).model,
                          LowBitDecoder)  # a float dtype keeps today's runner


def test_dtype_gguf_is_refused_where_it_cannot_run(tmp_path):
    path = _tiny(tmp_path, "qwen2")
    with pytest.raises(UsageError, match="compiled"):
        load_model(path, dtype="gguf", compile=True)
    with pytest.raises(UsageError, match="dynamic"):
        load_model(path, dtype="gguf", runtime="dynamic")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(UsageError, match="GGUF"):
        load_model(folder, dtype="gguf")


def test_the_verdict_is_measured_once_and_kept(tmp_path, monkeypatch):
    calls = []

    def measure() -> LowBitVerdict:
        calls.append(1)
        return FASTER

    monkeypatch.setattr(low_bit_choice, "measure", measure)
    assert low_bit_choice.low_bit_verdict() == FASTER
    assert low_bit_choice.low_bit_verdict() == FASTER and len(calls) == 1
    assert low_bit_choice.low_bit_verdict(refresh=True) == FASTER and len(calls) == 2
    assert FASTER.faster and not SLOWER.faster
    assert not LowBitVerdict((1.0, 5.0), (3.0, 4.0), "x", "y").faster  # every row count
    assert "faster" in FASTER.line() and "not faster" in SLOWER.line()


def test_the_calibration_measures_both_products():
    verdict = low_bit_choice.measure()
    assert len(verdict.low_bit_ms) == len(verdict.dense_ms) == len(low_bit_choice.ROWS)
    assert all(ms > 0 for ms in verdict.low_bit_ms + verdict.dense_ms)


def test_self_drafting_a_low_bit_target_is_refused_with_the_way_out(tmp_path):
    from specdec.drafters.factory import build_drafter

    low = load_model(_tiny(tmp_path, "qwen2"), dtype="gguf")
    with pytest.raises(UsageError, match="--dtype bfloat16"):
        build_drafter("self@int4", low, None)
