"""The compiled GGUF decoder (kernels/gguf_ops.cpp) gives the numpy decoders' numbers exactly."""

import numpy as np
import pytest
import torch

from gguf_fixtures import random_blocks
from specdec.models import gguf_blocks
from specdec.runtime.kernels import load_kernels


@pytest.mark.parametrize("kind", sorted(gguf_blocks.NATIVE, key=int), ids=lambda k: k.name)
def test_native_decoding_equals_numpy_decoding(kind):
    if not load_kernels().available:
        pytest.skip("the kernels cannot be built here (the numpy decoders are used)")
    block = gguf_blocks.GGML_QUANT_SIZES[kind][0]
    raw = random_blocks(kind, 37, block * 3, np.random.default_rng(int(kind)))
    expected, got = gguf_blocks.DECODERS[kind](raw), gguf_blocks._native(kind, raw)
    assert got.group == expected.group
    assert torch.equal(got.values, expected.values)
    assert torch.equal(got.scales, expected.scales)
    assert (got.mins is None) == (expected.mins is None)
    assert got.mins is None or torch.equal(got.mins, expected.mins)
    assert gguf_blocks.decode_quantized(kind, raw).values.data_ptr() != 0  # the public path
