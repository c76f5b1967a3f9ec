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
    """`weight` in the tiled layout above."""
    n, k = weight.shape
    group, groups = weight.group, k // weight.group
    tiles = -(-n // TILE)
    pad = tiles * TILE - n
    values = torch.nn.functional.pad(weight.values, (0, 0, 0, pad))
    stored = (values.view(torch.uint8) ^ OFFSET).view(tiles, TILE, groups, group // CHUNK, CHUNK)
    parts = [stored.permute(0, 2, 3, 1, 4).reshape(tiles, groups, group * TILE)]
    scale_bytes = 2 if fp16_exact(weight.scales) else 4
    scales = torch.nn.functional.pad(weight.scales, (0, 0, 0, pad))
    scales = scales.half() if scale_bytes == 2 else scales
    parts.append(_per_tile(scales, tiles, groups))
    if weight.mins is not None:
        parts.append(_per_tile(torch.nn.functional.pad(weight.mins, (0, 0, 0, pad)), tiles, groups))
    data = torch.cat(parts, dim=2).reshape(-1)
    return PackedGroupWeight(data, n, k, group, scale_bytes, weight.mins is not None)


def _per_tile(per_output: torch.Tensor, tiles: int, groups: int) -> torch.Tensor:
    """[tiles * 16, groups] numbers as [tiles, groups, 16 * itemsize] bytes."""
    grouped = per_output.view(tiles, TILE, groups).permute(0, 2, 1).contiguous()
    return grouped.view(torch.uint8).view(tiles, groups, -1)
