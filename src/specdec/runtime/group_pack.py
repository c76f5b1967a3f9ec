"""A GroupQuantized weight in the tiled byte layout the compiled product streams.

Outputs in tiles of 16 (N padded with zero rows); per tile, per group of inputs, one block:
    [group/4 chunks x 16 outputs x 4 inputs: value + 128 as uint8]
    [16 scales: float16 where every scale is exactly a float16 (Q8_0, Q5_0), else float32]
    [16 minimums: float32, only when the weight has them]
so each tile is read front to back once per call, and a 4-byte chunk of one activation row
against 64 weight bytes gives 16 outputs' partial sums in one AVX512-VNNI instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.runtime.group_weights import GroupQuantized

TILE = 16  # outputs per tile
CHUNK = 4  # inputs per output per interleaved chunk (one vpdpbusd lane)
OFFSET = 128  # stored byte = value + OFFSET, the unsigned operand vpdpbusd wants


@dataclass
class PackedGroupWeight:
    """The packed bytes of an [n, k] weight and what the kernel needs to read them."""

    data: torch.Tensor  # uint8, tiles * groups * block bytes
    n: int
    k: int
    group: int
    scale_bytes: int  # 2 (float16) or 4 (float32)
    mins: bool

    @property
    def bytes(self) -> int:
        """Bytes one product reads (every one of them, once)."""
        return int(self.data.numel())


def fp16_exact(scales: torch.Tensor) -> bool:
    """Whether every scale survives a round trip through float16 unchanged."""
    return bool(torch.equal(scales.half().float(), scales))


def pack(weight: GroupQuantized) -> PackedGroupWeight:
    """`weight` in the tiled layout above (needs the compiled kernels, as the product that
    reads it does)."""
    n, k = weight.shape
    pad = -n % TILE

    def padded(rows: torch.Tensor) -> torch.Tensor:  # zero outputs up to a whole tile
        return torch.nn.functional.pad(rows, (0, 0, 0, pad)) if pad else rows

    scale_bytes = 2 if fp16_exact(weight.scales) else 4
    mins = torch.empty(0) if weight.mins is None else padded(weight.mins)
    # one multithreaded pass (kernels/gguf_ops.cpp): loading packs every weight of a model
    data = torch.ops.specdec.pack_tiles(padded(weight.values), padded(weight.scales), mins,
                                        scale_bytes)
    return PackedGroupWeight(data, n, k, weight.group, scale_bytes, weight.mins is not None)
