"""Which low-bit product a device runs: torch's packed int4 / int8 kernels, or none (refused).

A low-bit drafter pays only when its products read the low-bit weights directly: one that
dequantizes the whole weight on every call reads more bytes than the bf16 layer it replaces.
So there is no such fallback. On the CPU torch always has both kernels
(`_weight_int4pack_mm_for_cpu`, `_weight_int8pack_mm`); on CUDA a layer uses
`_weight_int4pack_mm` (tinygemm's layout, bf16 tensor cores: compute capability 8.0 and
later) or `_weight_int8pack_mm` where this torch build registers them, and is refused with a
message otherwise; other devices are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from specdec.errors import UsageError

INT4_GROUPS = (32, 64, 128, 256)  # group sizes both int4 kernels accept
INT4_CUDA_CAPABILITY = (8, 0)  # tinygemm's int4 kernel runs on bf16 tensor cores
INT4_CUDA_OPS = ("_weight_int4pack_mm", "_convert_weight_to_int4pack")
INT8_OP = "_weight_int8pack_mm"


class LowBitUnsupported(UsageError):
    """No real low-bit kernel for this layer on this device (and no slow stand-in is used)."""


def has_kernel(op: str, device_type: str) -> bool:
    """Whether this torch build registers a kernel for aten::op on devices of this type."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", device_type.upper())


@dataclass(frozen=True)
class LowBitChoice:
    """How a layer is stored: `bits` 4 (with `group`) or 8, in `layout` ('cpu' or 'cuda')."""

    bits: int
    group: int | None
    layout: str


def int4_group(in_features: int, preferred: int = 32) -> int | None:
    """The group size to use for a layer: `preferred` if it divides in_features, else another."""
    for group in (preferred, *INT4_GROUPS):
        if group in INT4_GROUPS and in_features % group == 0:
            return group
    return None


def choose_low_bit(bits: int, in_features: int, device: torch.device, group_size: int = 32,
                   capability: tuple[int, int] | None = None,
                   kernel: Callable[[str, str], bool] = has_kernel) -> LowBitChoice:
    """The kernel a `bits`-bit layer with in_features inputs runs on `device`, or
    LowBitUnsupported. int4 falls back to int8 only where int4's group sizes do not divide
    in_features (both are real kernels). capability: the CUDA device's (read when None)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    kind = device.type
    group = int4_group(in_features, group_size) if bits == 4 else None
    if kind == "cpu":
        return LowBitChoice(4, group, "cpu") if group is not None else LowBitChoice(8, None, "cpu")
    if kind != "cuda":
        raise LowBitUnsupported(f"@int{bits} on {kind}: no low-bit kernel for this device "
                                f"(CPU and CUDA only); drop @int{bits}")
    if group is not None:
        why = _int4_cuda_unavailable(device, capability, kernel)
        if why is not None:
            raise LowBitUnsupported(f"@int4 on {device}: {why}; use @int8 or drop @int4")
        return LowBitChoice(4, group, "cuda")
    if not kernel(INT8_OP, kind):
        raise LowBitUnsupported(
            f"@int{bits} on {device}: this torch build has no CUDA kernel for int8 weight-only "
            f"products (aten::{INT8_OP}; a newer torch has one); drop @int{bits}")
    return LowBitChoice(8, None, "cuda")


def _int4_cuda_unavailable(device: torch.device, capability: tuple[int, int] | None,
                           kernel: Callable[[str, str], bool]) -> str | None:
    missing = [op for op in INT4_CUDA_OPS if not kernel(op, "cuda")]
    if missing:
        return f"this torch build has no CUDA kernel for {', '.join('aten::' + m for m in missing)}"
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < INT4_CUDA_CAPABILITY:
        return (f"torch's int4 CUDA kernel needs compute capability "
                f"{'.'.join(map(str, INT4_CUDA_CAPABILITY))} or later, this GPU has "
                f"{'.'.join(map(str, capability))}")
    return None


def pack_int4_nibbles(q: torch.Tensor) -> torch.Tensor:
    """q [n, k] in 0..15 as uint8 [n, k / 2], two per byte, the even column in the high
    nibble: the input `_convert_weight_to_int4pack` (CUDA, torch >= 2.5) takes."""
    q = q.to(torch.int32)
    return ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)


def inner_k_tiles(in_features: int) -> int:
    """tinygemm's inner k tiles for in_features (it needs in_features % (16 * tiles) == 0)."""
    return next(t for t in (8, 4, 2) if in_features % (16 * t) == 0)
