"""GGUF parsing (metadata, tensor infos, raw views) and exact block decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

from gguf_fixtures import QUANTIZABLE, Q, random_blocks
from specdec.errors import ModelLoadError
from specdec.models.gguf_blocks import (
    QUANTIZED_TYPES,
    decode_float,
    decode_quantized,
    group_quantized,
    requantize_float,
)
from specdec.models.gguf_file import GGUFFile

BLOCK_TYPES = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K,
               Q.Q6_K)
GROUP_16 = (Q.Q2_K, Q.Q3_K, Q.Q6_K)


def _write(path: Path, tensors: dict[str, tuple[np.ndarray, Q | None]]) -> None:
    writer = GGUFWriter(str(path), "llama")
    writer.add_uint32("test.count", 7)
    writer.add_float32("test.eps", 1e-5)
    writer.add_bool("test.flag", True)
    writer.add_string("test.name", "tiny ü")
    writer.add_array("test.numbers", [3, 1, 4, 1, 5])
    writer.add_array("test.words", ["a", "", "ünï", "x" * 300])
    for name, (data, kind) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    tensors = {f"q.{kind.name}": (random_blocks(kind, 6, 512, rng), kind) for kind in BLOCK_TYPES}
    tensors["norm"] = (rng.normal(size=64).astype(np.float32), None)
    tensors["half"] = (rng.normal(size=(4, 32)).astype(np.float16), None)
    path = tmp_path / "mixed.gguf"
    _write(path, tensors)
    return path


def test_metadata_and_tensor_infos_match_gguf_reader(mixed: Path) -> None:
    file, reader = GGUFFile(mixed), GGUFReader(mixed)
    assert file.metadata("general.architecture") == "llama"
    assert file.metadata("test.count") == 7
    assert file.metadata("test.eps") == pytest.approx(1e-5)
    assert file.metadata("test.flag") is True
    assert file.metadata("test.name") == "tiny ü"
    assert file.metadata("test.numbers") == [3, 1, 4, 1, 5]
    assert file.strings("test.words") == ["a", "", "ünï", "x" * 300]
    assert file.metadata("test.missing", "default") == "default"
    assert set(file.metadata_keys()) == set(reader.fields) - {
        "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    assert list(file.tensors) == [t.name for t in reader.tensors]
    for tensor in reader.tensors:
        info = file.tensors[tensor.name]
        assert info.type == tensor.tensor_type
        assert info.shape == tuple(int(d) for d in reversed(tensor.shape))  # [out, in]
        raw = file.raw(tensor.name)
        assert raw.dtype == np.uint8 and not raw.flags.writeable
        assert np.array_equal(raw.reshape(-1), tensor.data.view(np.uint8).reshape(-1))
    assert file.tensors["q.Q6_K"].shape == (6, 512)


def test_raw_is_a_view_of_the_mapping(mixed: Path) -> None:
    file = GGUFFile(mixed)
    raw = file.raw("q.Q8_0")
    assert raw.base is not None and np.shares_memory(raw, file._map)


@pytest.mark.parametrize("kind", BLOCK_TYPES, ids=lambda k: k.name)
def test_random_blocks_decode_exactly_like_gguf_dequantize(kind: Q) -> None:
    rng = np.random.default_rng(int(kind))
    raw = random_blocks(kind, 8, 768, rng)
    weight = decode_quantized(kind, raw)
    assert weight.shape == (8, 768)
    assert weight.group == (16 if kind in GROUP_16 else 32)
    expected = torch.from_numpy(dequantize(raw, kind))
    assert torch.equal(weight.dequantize(), expected)
    assert (weight.mins is None) == (kind in (Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q3_K, Q.Q6_K))


@pytest.mark.parametrize("kind", QUANTIZABLE, ids=lambda k: k.name)
def test_quantized_weights_decode_exactly(kind: Q) -> None:
    weight = np.random.default_rng(2).normal(size=(16, 256)).astype(np.float32)
    raw = quantize(weight, kind)
    decoded = decode_quantized(kind, raw).dequantize()
    assert torch.equal(decoded, torch.from_numpy(dequantize(raw, kind)))
    # the decode is of real quantized weights, not noise: close to the original
    assert (decoded - torch.from_numpy(weight)).abs().max() < 0.5


def test_values_stay_in_each_formats_integer_range() -> None:
    rng = np.random.default_rng(3)
    ranges = {Q.Q8_0: (-128, 127), Q.Q4_0: (-8, 7), Q.Q4_1: (0, 15), Q.Q5_0: (-16, 15),
              Q.Q5_1: (0, 31), Q.Q2_K: (0, 3), Q.Q3_K: (-4, 3), Q.Q4_K: (0, 15),
              Q.Q5_K: (0, 31), Q.Q6_K: (-32, 31)}
    for kind, (low, high) in ranges.items():
        values = decode_quantized(kind, random_blocks(kind, 16, 1024, rng)).values
        assert int(values.min()) == low and int(values.max()) == high, kind.name


def test_every_block_decoder_is_tested() -> None:
    assert set(BLOCK_TYPES) == QUANTIZED_TYPES


def test_files_decode_exactly_through_the_mapping(mixed: Path) -> None:
    file = GGUFFile(mixed)
    for kind in BLOCK_TYPES:
        info = file.tensors[f"q.{kind.name}"]
        weight = group_quantized(info.type, file.raw(info.name), info.shape)
        assert torch.equal(weight.dequantize(),
                           torch.from_numpy(dequantize(file.raw(info.name), kind)))
    norm = file.tensors["norm"]
    assert torch.equal(decode_float(norm.type, file.raw("norm"), norm.shape),
                       torch.from_numpy(GGUFReader(mixed).tensors[-2].data.copy()))
    half = file.tensors["half"]
    decoded = decode_float(half.type, file.raw("half"), half.shape)
    assert decoded.dtype == torch.float32 and decoded.shape == (4, 32)


def test_bf16_decodes_exactly() -> None:
    weight = torch.randn(4, 64).to(torch.bfloat16)
    raw = weight.view(torch.int16).numpy().view(np.uint8).reshape(4, -1)
    assert torch.equal(decode_float(Q.BF16, raw, (4, 64)), weight.float())


def test_float_matrices_requantize_to_int8_per_32() -> None:
    weight = torch.randn(8, 64)
    weight[0, :32] = 0  # an all-zero group must not divide by zero
    quantized = requantize_float(weight)
    assert quantized.group == 32 and quantized.mins is None
    error = (quantized.dequantize() - weight).abs()
    # symmetric int8 rounding: at most half a step of each group's scale
    step = quantized.scales.repeat_interleave(32, dim=1)
    assert bool((error <= step / 2 + 1e-7).all())
    assert torch.equal(quantized.dequantize()[0, :32], torch.zeros(32))
    raw = weight.numpy().view(np.uint8).reshape(8, -1)
    assert torch.equal(group_quantized(Q.F32, raw, (8, 64)).values, quantized.values)


def test_corrupt_files_are_refused(tmp_path: Path, mixed: Path) -> None:
    data = mixed.read_bytes()
    cases = {"magic": b"GGUX" + data[4:], "truncated": data[: len(data) // 2],
             "header": data[:40], "version": data[:4] + (9).to_bytes(4, "little") + data[8:]}
    for name, content in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(content)
        with pytest.raises(ModelLoadError):
            GGUFFile(path)


def test_unknown_tensor_and_non_array_lookups_fail_clearly(mixed: Path) -> None:
    file = GGUFFile(mixed)
    with pytest.raises(ModelLoadError, match="no tensor"):
        file.raw("absent")
    with pytest.raises(ModelLoadError, match="not an array"):
        file.array("test.count")
    with pytest.raises(ModelLoadError, match="not of strings"):
        file.strings("test.numbers")
