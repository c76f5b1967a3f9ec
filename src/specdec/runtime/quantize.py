"""Weight-only int8 and int4 linear layers, for drafters.

On CPU a one-token forward is bound by reading weights. Measured at Qwen2.5-0.5B shapes (one
row, 2 threads, AVX512-VNNI/BF16 without AMX): torch's `_weight_int8pack_mm` (one scale per
output row) is ~2x faster than bf16 and `_weight_int4pack_mm_for_cpu` (groups of 32-64 input
features, a scale and an offset each) ~3x faster than int8 on the large shapes; both are
slower than bf16 from a few rows up. So each layer can keep a reference to the full-precision
weight it came from (`full_rows`): passes of more rows than that (a prompt's prefill) run in
full precision, one-token drafting steps in low bits. A drafter's precision never touches
exactness: verification against the target's p corrects whatever q it proposes.

On CUDA the same layers use torch's CUDA kernels (`_weight_int4pack_mm` in tinygemm's layout,
`_weight_int8pack_mm`); where a device has none the layer is refused (low_bit_kernels), never
dequantized on every call.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from specdec.errors import UsageError
from specdec.runtime.linear import PackedLinear
from specdec.runtime.low_bit_kernels import (
    INT4_GROUPS,
    choose_low_bit,
    inner_k_tiles,
    int4_group,
    pack_int4_nibbles,
)

INT4_N_MULTIPLE = 16  # the packed layouts need out_features divisible by 16 (CUDA: 8): pad rows
INT4_COMPUTE_ENV = "SPECDEC_INT4_COMPUTE"  # overrides int4_compute_dtype's default
_COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32,
                   "float16": torch.float16}


class _LowBitLinear(nn.Module):
    """Shared parts: bias, shapes, and the optional full-precision path for many rows."""

    def __init__(self, linear: nn.Linear, full_rows: int | None, full: nn.Module | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(),
                                                                 requires_grad=False)
        # the full-precision layer itself (`full`, else `linear`), shared with the model it
        # came from, not registered: a view's tree holds only the low-bit layer
        object.__setattr__(self, "full", None if full_rows is None else (full or linear))
        self.full_rows = full_rows
        # output widths of the layers stacked in this one (q, k, v or gate, up): see parts()
        self.splits = full.splits if isinstance(full, PackedLinear) else (self.out_features,)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(self(x), self.splits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.full is not None and flat.shape[0] > self.full_rows:
            return self.full(x)  # bias included
        out = self._low_bit(flat)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def _low_bit(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_layout(self, flat: torch.Tensor, layout: str) -> None:
        if flat.device.type != layout:
            raise RuntimeError(f"a low-bit layer packed for {layout} called on "
                               f"{flat.device.type}: quantize the model where it runs")


def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [out, in], scale float [out]) with weight ~ q * scale[:, None]."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8), scales


def int4_quantize(weight: torch.Tensor, group_size: int,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q in 0..15 [out, in/g, g], scale [out, in/g], low [out, in/g]): w ~ q * scale + low."""
    groups = weight.detach().float().reshape(weight.shape[0], -1, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15).clamp_min(1e-12)
    q = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15)
    return q, scale, low


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int = 32) -> torch.Tensor:
    """The weight as the low-bit layer sees it, in weight's dtype (for measurements)."""
    if bits == 4 and int4_group(weight.shape[1], group_size) is not None:
        q, scale, low = int4_quantize(weight, int4_group(weight.shape[1], group_size))
        return (q * scale[..., None] + low[..., None]).reshape(weight.shape).to(weight.dtype)
    q, scales = int8_quantize(weight)
    return (q.float() * scales[:, None]).to(weight.dtype)


class Int8Linear(_LowBitLinear):
    """y = x W^T (+ b) with W stored as int8 rows and one scale per output feature."""

    def __init__(self, linear: nn.Linear, full_rows: int | None = None,
                 full: nn.Module | None = None):
        super().__init__(linear, full_rows, full)
        if linear.weight.device.type != "cpu":  # refused where the device has no kernel
            choose_low_bit(8, self.in_features, linear.weight.device)
        q, scales = int8_quantize(linear.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales.to(linear.weight.dtype))

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weights (shape [out, in]): enough for callers that read shapes."""
        return self.qweight

    def _low_bit(self, flat: torch.Tensor) -> torch.Tensor:
        # the int8 layout is plain [out, in] rows: any device with the kernel runs it
        return torch.ops.aten._weight_int8pack_mm(flat.to(self.scales.dtype), self.qweight,
                                                  self.scales)


class Int4Linear(_LowBitLinear):
    """y = x W^T (+ b), W in 4 bits: per group of `group_size` inputs, w = q * scale + min.

    Asymmetric groups (16 levels between the group's min and max). Stored in the packed
    layout of the weight's device: `_weight_int4pack_mm_for_cpu`'s on the CPU, tinygemm's
    (`_weight_int4pack_mm`) on CUDA; out_features padded to a multiple of 16.
    """

    def __init__(self, linear: nn.Linear, group_size: int = 32, full_rows: int | None = None,
                 full: nn.Module | None = None, compute_dtype: torch.dtype | None = None):
        super().__init__(linear, full_rows, full)
        if group_size not in INT4_GROUPS or linear.in_features % group_size:
            raise ValueError(f"int4 needs in_features ({linear.in_features}) divisible by a "
                             f"group size in {INT4_GROUPS}, got {group_size}")
        device = linear.weight.device
        choice = choose_low_bit(4, self.in_features, device, group_size)  # raises if none
        self.layout = choice.layout
        self.group_size = group_size
        self.weight_dtype = linear.weight.dtype  # what the layer takes and returns
        weight = linear.weight.detach().float()
        pad = -self.out_features % INT4_N_MULTIPLE
        if pad:
            weight = torch.cat([weight, weight.new_zeros(pad, self.in_features)])
        rows = weight.shape[0]
        q, scale, low = int4_quantize(weight, group_size)
        q = q.to(torch.int32).reshape(rows, -1)
        if self.layout == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack(
                pack_int4_nibbles(q), inner_k_tiles(self.in_features))
        # both kernels compute (q - 8) * scale + zero, so zero = low + 8 * scale
        zeros = low + 8 * scale
        self.register_buffer("qweight", packed)
        # tinygemm (CUDA) takes bfloat16 only
        compute = torch.bfloat16 if self.layout == "cuda" else \
            compute_dtype or int4_compute_dtype(linear.weight.dtype)
        self.register_buffer("scales_and_zeros", torch.stack([scale, zeros], dim=-1)
                             .transpose(0, 1).contiguous().to(compute))

    @property
    def weight(self) -> torch.Tensor:
        """An [out, in]-shaped stand-in for callers that read shapes and dtype (no storage)."""
        return self.scales_and_zeros.new_zeros((), dtype=self.weight_dtype).expand(
            self.out_features, self.in_features)

    def _low_bit(self, flat: torch.Tensor) -> torch.Tensor:
        self._check_layout(flat, self.layout)
        kernel = torch.ops.aten._weight_int4pack_mm_for_cpu if self.layout == "cpu" else \
            torch.ops.aten._weight_int4pack_mm
        out = kernel(flat.to(self.scales_and_zeros.dtype), self.qweight, self.group_size,
                     self.scales_and_zeros)
        return out[:, : self.out_features].to(flat.dtype)


def int4_compute_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype an int4 layer's activations, scales and zeros use (a documented default).

    A float32 model's int4 layers compute in bfloat16 and return float32: torch's CPU int4
    kernel has a vectorized bfloat16 path, and its float32 one was ~10x slower where measured
    (an int4 drafting step 542 ms against 42 ms). The drafter's precision never touches
    exactness. Override with SPECDEC_INT4_COMPUTE=float32 (or bfloat16, float16), or pass
    compute_dtype to Int4Linear / quantized_linear.
    """
    chosen = os.environ.get(INT4_COMPUTE_ENV, "").strip().lower()
    if chosen:
        if chosen not in _COMPUTE_DTYPES:
            raise UsageError(f"{INT4_COMPUTE_ENV} must be one of {', '.join(_COMPUTE_DTYPES)}, "
                             f"got {chosen!r}")
        return _COMPUTE_DTYPES[chosen]
    return torch.bfloat16 if weight_dtype == torch.float32 else weight_dtype


def quantized_linear(linear: nn.Linear, bits: int, group_size: int = 32,
                     full_rows: int | None = None, full: nn.Module | None = None,
                     compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Int8Linear or Int4Linear for `linear` on its device (int8 where int4's group sizes do
    not fit); LowBitUnsupported where the device has no such kernel. Passes over more than
    `full_rows` rows call `full` (default: `linear`). compute_dtype: int4's (default
    `int4_compute_dtype`)."""
    choice = choose_low_bit(bits, linear.in_features, linear.weight.device, group_size)
    if choice.bits == 4:
        assert choice.group is not None
        return Int4Linear(linear, choice.group, full_rows, full, compute_dtype)
    return Int8Linear(linear, full_rows, full)
