"""GGUF block formats decoded into `GroupQuantized` exactly, and float tensors into float32.

Supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (groups of 32), Q4_K, Q5_K (32), Q2_K, Q3_K, Q6_K
(16). Each stores, per group, integers and a scale (and for Q4_1, Q5_1, Q2_K, Q4_K and Q5_K
a minimum) that multiply out to the weight. Decoding unpacks those integers and multiplies
the block's scale factors out the way ggml does (d * sub-scale in float32: exact, as an
11-bit float16 mantissa times a small integer fits float32's 24 bits), so
`GroupQuantized.dequantize()` gives the same float32 numbers as gguf-py's
`gguf.quants.dequantize`, bit for bit: nothing here rounds a weight.

The one exception is `requantize_float`: a float (F32/F16/BF16) matrix that must become a
`GroupQuantized` is quantized symmetric int8 per 32 inputs; that rounds, and it is the only
place in the GGUF path that does.

Layouts follow ggml's reference (ggml-quants.c) and gguf-py's quants.py. All unpacking is
vectorized numpy over the whole tensor: `raw` is [rows, bytes per row] (GGUFFile.raw).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from specdec.runtime.group_weights import GroupQuantized
from specdec.runtime.kernels import load_kernels

Q = GGMLQuantizationType
FLOAT_TYPES = frozenset({Q.F32, Q.F16, Q.BF16})
REQUANT_GROUP = 32  # inputs per scale when a float matrix is quantized to int8


def _blocks(raw: np.ndarray, kind: Q) -> np.ndarray:
    """[rows, bytes per row] -> [rows, blocks per row, bytes per block]."""
    return raw.reshape(raw.shape[0], -1, GGML_QUANT_SIZES[kind][1])


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of every block, as float32 [rows, blocks]."""
    # a strided float16 view of the blocks (every format keeps d at an even offset), converted
    # in one pass: copying the 2-byte fields out first costs more than the conversion
    return blocks[..., start:start + 2].view(np.float16)[..., 0].astype(np.float32)


def _words(data: np.ndarray) -> np.ndarray:
    """Bytes [..., n] (n a multiple of 8) as contiguous uint64 words [..., n / 8].

    Bit twiddling runs on 8 bytes at a time and on contiguous arrays: numpy pays per inner
    loop, and the block formats' natural inner loops (16 or 32 bytes) are short."""
    return np.ascontiguousarray(data).view(np.uint64)


_LOW = np.uint64(0x0F0F0F0F0F0F0F0F)
_TWO = np.uint64(0x0303030303030303)
# byte b -> 8 bytes, byte i 0x10 where bit i of b is set: the fifth bit of 8 values at once
_FIFTH = np.array([sum(0x10 << (8 * i) for i in range(8) if b >> i & 1) for b in range(256)],
                  dtype=np.uint64)
# the same with Q5_0's offset folded in: nibble | 0xF0 is nibble - 16 as int8 (fifth bit 0),
# nibble | 0x00 is nibble + 16 - 16 (fifth bit 1)
_FIFTH_CENTRED = np.array([sum(0xF0 << (8 * i) for i in range(8) if not b >> i & 1)
                           for b in range(256)], dtype=np.uint64)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes [..., n] -> uint8 [..., 2n]: low nibbles first (elements 0..n-1), then high."""
    words = _words(qs)
    # interleave the two halves as opaque n-byte items: numpy copies those in one pass,
    # where concatenate along a short last axis pays per row
    item = np.dtype(f"V{qs.shape[-1]}")
    both = np.empty((*qs.shape[:-1], 2), dtype=item)
    both[..., 0] = (words & _LOW).view(item)[..., 0]
    both[..., 1] = ((words >> np.uint64(4)) & _LOW).view(item)[..., 0]
    return both.view(np.uint8).reshape(*qs.shape[:-1], 2 * qs.shape[-1])


def _result(values: np.ndarray, scales: np.ndarray, mins: np.ndarray | None,
            group: int) -> GroupQuantized:
    rows = values.shape[0]
    mins_t = None if mins is None else torch.from_numpy(mins.reshape(rows, -1))
    return GroupQuantized(torch.from_numpy(values.view(np.int8).reshape(rows, -1)),
                          torch.from_numpy(scales.reshape(rows, -1)), mins_t, group)


def _q8_0(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q8_0)
    return _result(np.ascontiguousarray(blocks[..., 2:]), _f16(blocks, 0), None, 32)


def _q4_0(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q4_0)
    values = _nibbles(blocks[..., 2:])
    values -= 8  # wraps in uint8; read as int8 it is q - 8
    return _result(values, _f16(blocks, 0), None, 32)


def _q4_1(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q4_1)
    # ggml adds m; GroupQuantized subtracts mins, and x - (-m) == x + m exactly
    return _result(_nibbles(blocks[..., 4:]), _f16(blocks, 0), -_f16(blocks, 2), 32)


def _five_bit(qs: np.ndarray, qh: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The _0/_1 5-bit values: nibbles of qs, fifth bit of element i at bit i of qh, spread
    by `table` (_FIFTH, or _FIFTH_CENTRED for q - 16)."""
    values = _nibbles(qs)
    values |= table[np.ascontiguousarray(qh)].view(np.uint8).reshape(values.shape)
    return values


def _q5_0(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q5_0)
    values = _five_bit(blocks[..., 6:], blocks[..., 2:6], _FIFTH_CENTRED)
    return _result(values, _f16(blocks, 0), None, 32)


def _q5_1(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q5_1)
    values = _five_bit(blocks[..., 8:], blocks[..., 4:8], _FIFTH)
    return _result(values, _f16(blocks, 0), -_f16(blocks, 2), 32)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins (as float32)."""
    d, m, m_d = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _q4_k(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q4_K)
    sc, m = _k_scales(blocks[..., 4:16])
    # 128 bytes in 4 chunks of 32: a chunk's low nibbles are sub-block 2c, high ones 2c+1
    qs = blocks[..., 16:].reshape(*blocks.shape[:2], 4, 32)
    return _result(_nibbles(qs), _f16(blocks, 0)[..., None] * sc,
                   _f16(blocks, 2)[..., None] * m, 32)


def _q5_k(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q5_K)
    sc, m = _k_scales(blocks[..., 4:16])
    qh = blocks[..., 16:48]
    qs = blocks[..., 48:].reshape(*blocks.shape[:2], 4, 32)
    values = _nibbles(qs).reshape(*blocks.shape[:2], 8, 32)
    # the fifth bit of element j of sub-block s is bit s of qh[j]
    high = np.unpackbits(qh[..., None, :], axis=-2, count=8, bitorder="little")
    values |= high << 4
    return _result(values, _f16(blocks, 0)[..., None] * sc,
                   _f16(blocks, 2)[..., None] * m, 32)


def _q6_k(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q6_K)
    rows, n = blocks.shape[:2]
    # ql: two halves of 64 bytes; a half's low nibbles are its first 64 values, high the next
    low = _nibbles(blocks[..., :128].reshape(rows, n, 2, 64)).reshape(rows, n, 8, 32)
    # qh: two halves of 32 bytes; bit pairs 0-1, 2-3, 4-5, 6-7 feed that half's 4 chunks
    qh = _words(blocks[..., 128:192].reshape(rows, n, 2, 32))
    high = np.empty((rows, n, 2, 4), dtype=np.dtype("V32"))
    for i, shift in enumerate((0, 2, 4, 6)):
        high[..., i] = (((qh >> np.uint64(shift)) & _TWO) << np.uint64(4)).view("V32")[..., 0]
    low |= high.view(np.uint8).reshape(rows, n, 8, 32)
    low -= 32  # wraps in uint8; read as int8 it is q - 32
    sub = np.ascontiguousarray(blocks[..., 192:208]).view(np.int8).astype(np.float32)
    return _result(low, _f16(blocks, 208)[..., None] * sub, None, 16)


def _two_bit(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K low bits: [rows, n, 64] bytes -> uint8 [rows, n, 256]; each half of 32
    bytes gives its bit pairs 0-1, 2-3, 4-5, 6-7 as four runs of 32 values."""
    rows, n = qs.shape[:2]
    words = _words(qs.reshape(rows, n, 2, 32))
    out = np.empty((rows, n, 2, 4), dtype=np.dtype("V32"))
    for i, shift in enumerate((0, 2, 4, 6)):
        out[..., i] = ((words >> np.uint64(shift)) & _TWO).view("V32")[..., 0]
    return out.view(np.uint8).reshape(rows, n, 256)


def _q2_k(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q2_K)
    packed = blocks[..., :16]  # per 16 values: scale in the low nibble, min in the high one
    scales = _f16(blocks, 80)[..., None] * (packed & 0x0F).astype(np.float32)
    mins = _f16(blocks, 82)[..., None] * (packed >> 4).astype(np.float32)
    return _result(_two_bit(blocks[..., 16:80]), scales, mins, 16)


def _q3_k(raw: np.ndarray) -> GroupQuantized:
    blocks = _blocks(raw, Q.Q3_K)
    rows, n = blocks.shape[:2]
    values = _two_bit(blocks[..., 32:96]).reshape(rows, n, 8, 32)
    # the third bit of element j of run i is bit i of hmask[j]; a 0 there means q - 4, which
    # for q in 0..3 is q | 0xFC read as int8
    high = np.unpackbits(blocks[..., None, :32], axis=-2, count=8, bitorder="little")
    values |= (high ^ 1) * np.uint8(0xFC)
    packed = blocks[..., 96:108]
    low = np.concatenate([packed[..., :8] & 0x0F, packed[..., :8] >> 4], axis=-1)
    top = packed[..., 8:12]
    top = np.concatenate([(top >> shift) & 0x03 for shift in (0, 2, 4, 6)], axis=-1)
    sub = (low | (top << 4)).astype(np.float32) - 32  # 6-bit scales, offset by 32
    return _result(values, _f16(blocks, 108)[..., None] * sub, None, 16)


DECODERS: dict[Q, Callable[[np.ndarray], GroupQuantized]] = {
    Q.Q2_K: _q2_k, Q.Q3_K: _q3_k,
    Q.Q8_0: _q8_0, Q.Q4_0: _q4_0, Q.Q4_1: _q4_1, Q.Q5_0: _q5_0, Q.Q5_1: _q5_1,
    Q.Q4_K: _q4_k, Q.Q5_K: _q5_k, Q.Q6_K: _q6_k}
QUANTIZED_TYPES = frozenset(DECODERS)


def decode_quantized(kind: Q, raw: np.ndarray) -> GroupQuantized:
    """A block-quantized [rows, bytes per row] matrix as `GroupQuantized`, exactly."""
    if kind not in DECODERS:
        raise ValueError(f"no GroupQuantized decoder for GGUF type {kind.name}; supported: "
                         f"{sorted(k.name for k in DECODERS)}")
    if raw.ndim != 2:
        raise ValueError(f"expected [rows, bytes per row], got shape {list(raw.shape)}")
    if kind in NATIVE and load_kernels().available:
        return _native(kind, raw)
    return DECODERS[kind](raw)


# formats the compiled decoder reads (kernels/gguf_ops.cpp): one multithreaded pass, the
# same numbers as the numpy decoders above, which serve every other format and any machine
# where the kernels cannot be built
NATIVE = frozenset({Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q6_K})


def _native(kind: Q, raw: np.ndarray) -> GroupQuantized:
    block, size = GGML_QUANT_SIZES[kind]
    with warnings.catch_warnings():  # read-only mapping: the op only reads it
        warnings.simplefilter("ignore", UserWarning)
        blocks = torch.from_numpy(raw)
    values, scales, mins = torch.ops.specdec.gguf_decode(blocks, int(kind),
                                                         raw.shape[1] // size * block)
    group = values.shape[1] // scales.shape[1]
    return GroupQuantized(values, scales, mins if mins.numel() else None, group)


def decode_float(kind: Q, raw: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """An F32/F16/BF16 tensor as float32 of `shape` (a copy: the mapping is read-only)."""
    flat = np.ascontiguousarray(raw).reshape(-1)
    if kind == Q.F32:
        out = flat.view(np.float32).copy()
    elif kind == Q.F16:
        out = flat.view(np.float16).astype(np.float32)
    elif kind == Q.BF16:
        out = (flat.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        raise ValueError(f"GGUF type {kind.name} is not a float type")
    return torch.from_numpy(out.reshape(shape))


def requantize_float(weight: torch.Tensor) -> GroupQuantized:
    """A float [N, K] matrix quantized symmetric int8 per 32 inputs (scale = max|w| / 127).

    The only lossy step on the GGUF path: used for float matrices (rare in quantized GGUFs)
    that the low-bit runner must nevertheless read as `GroupQuantized`."""
    rows, cols = weight.shape
    grouped = weight.float().reshape(rows, cols // REQUANT_GROUP, REQUANT_GROUP)
    scales = grouped.abs().amax(dim=-1) / 127
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    values = torch.round(grouped / safe[..., None]).clamp(-127, 127).to(torch.int8)
    return GroupQuantized(values.reshape(rows, cols), scales, None, REQUANT_GROUP)


def group_quantized(kind: Q, raw: np.ndarray, shape: tuple[int, ...]) -> GroupQuantized:
    """Any 2D GGUF weight as `GroupQuantized`: block formats exactly, floats requantized."""
    if len(shape) != 2:
        raise ValueError(f"a GroupQuantized weight is 2D, got shape {list(shape)}")
    if kind in FLOAT_TYPES:
        return requantize_float(decode_float(kind, raw, shape))
    return decode_quantized(kind, raw)
