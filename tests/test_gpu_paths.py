"""CUDA-path decisions checked on the CPU: which low-bit kernel a device gets (or a refusal,
never a dequantize-every-call stand-in), tinygemm's int4 input layout, and a batching server
compiling nothing (its rows run eagerly)."""


import pytest
import torch
from torch import nn

from specdec.cli.options import RuntimeOptions
from specdec.cli.serve_build import serve_runtime
from specdec.runtime.low_bit_kernels import (
    LowBitChoice,
    LowBitUnsupported,
    choose_low_bit,
    inner_k_tiles,
    pack_int4_nibbles,
)
from specdec.runtime.quantize import quantized_linear

CUDA = torch.device("cuda")


def kernels(*present):
    return lambda op, device_type: device_type.lower() == "cuda" and op in present


INT4 = ("_weight_int4pack_mm", "_convert_weight_to_int4pack")
ALL = (*INT4, "_weight_int8pack_mm")


def test_cuda_low_bit_uses_the_cuda_kernels_where_the_build_and_gpu_have_them():
    assert choose_low_bit(4, 64, CUDA, capability=(8, 0), kernel=kernels(*ALL)) == \
        LowBitChoice(4, 32, "cuda")
    assert choose_low_bit(8, 64, CUDA, kernel=kernels(*ALL)) == LowBitChoice(8, None, "cuda")
    # no int4 group divides 24 inputs: the int8 kernel, as on the CPU
    assert choose_low_bit(4, 24, CUDA, kernel=kernels(*ALL)) == LowBitChoice(8, None, "cuda")
    assert choose_low_bit(4, 64, torch.device("cpu")) == LowBitChoice(4, 32, "cpu")


@pytest.mark.parametrize("bits,in_features,present,capability,message", [
    (4, 64, (), (9, 0), "no CUDA kernel for aten::_weight_int4pack_mm"),
    (4, 64, ALL, (7, 5), "compute capability 8.0 or later, this GPU has 7.5"),
    (8, 64, INT4, (9, 0), "no CUDA kernel for int8"),
    (4, 24, INT4, (9, 0), "no CUDA kernel for int8"),
])
def test_cuda_low_bit_without_a_kernel_is_refused_with_the_reason(bits, in_features, present,
                                                                   capability, message):
    with pytest.raises(LowBitUnsupported, match=message):
        choose_low_bit(bits, in_features, CUDA, capability=capability,
                       kernel=kernels(*present))


def test_devices_without_low_bit_kernels_are_refused_not_dequantized():
    with pytest.raises(LowBitUnsupported, match="int4 on mps"):
        choose_low_bit(4, 64, torch.device("mps"))
    # a layer on a device without kernels: refused at construction, whatever the bits
    for bits in (4, 8):
        with pytest.raises(LowBitUnsupported):
            quantized_linear(nn.Linear(64, 16, device="meta"), bits)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only torch build")
def test_this_cpu_only_build_refuses_int4_on_cuda_before_touching_a_gpu():
    with pytest.raises(LowBitUnsupported, match="no CUDA kernel"):
        choose_low_bit(4, 64, CUDA)  # capability is never read: no GPU needed


def test_int4_nibbles_are_tinygemms_input_layout():
    q = torch.randint(0, 16, (16, 64), generator=torch.Generator().manual_seed(0))
    packed = pack_int4_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.shape == (16, 32)
    unpacked = torch.stack([packed.int() >> 4, packed.int() & 15], dim=-1).reshape(16, 64)
    assert torch.equal(unpacked, q.int())  # the even column in the high nibble
    assert [inner_k_tiles(k) for k in (32, 64, 128, 896, 4864)] == [2, 4, 8, 8, 8]


def test_a_batching_server_compiles_nothing():
    runtime = RuntimeOptions(CUDA, compile=True)
    loaded, note = serve_runtime(runtime, max_batch_size=16)
    assert not loaded.compile and "eagerly" in note
    assert serve_runtime(runtime, max_batch_size=1) == (runtime, None)
    plain = RuntimeOptions(torch.device("cpu"), compile=False)
    assert serve_runtime(plain, 16) == (plain, None)
