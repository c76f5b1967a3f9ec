"""GroupLinear: a linear layer (no bias) over GroupQuantized weights, one product per call.

Several weights that read the same input (q/k/v, gate/up) are stacked into one product and
split back with `parts`. The product runs in the compiled kernel (runtime/kernels) on the
path `kernel_path` names, or in the pure-torch fallback ("torch") where the kernel is
unavailable; both quantize the activations per 32 inputs inside the product and return
float32, and row r of any call is bit-identical to that row computed alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from specdec.runtime import group_fallback
from specdec.runtime.group_pack import pack
from specdec.runtime.group_weights import GroupQuantized
from specdec.runtime.kernels import FALLBACK, kernel_path

BLOCK = 32  # activation inputs per scale: K must be a multiple


class GroupLinear(nn.Module):
    """y = x W^T for W one GroupQuantized weight, or several stacked along the outputs."""

    def __init__(self, weights: GroupQuantized | Sequence[GroupQuantized],
                 path: str | None = None) -> None:
        """`path` forces a path (avx512vnni, avx2, portable, or torch: the fallback); default
        $SPECDEC_KERNEL_PATH, else the fastest this CPU supports."""
        super().__init__()
        parts = [weights] if isinstance(weights, GroupQuantized) else list(weights)
        weight = parts[0] if len(parts) == 1 else GroupQuantized.stack(parts)
        self.out_features, self.in_features = weight.shape
        if self.in_features % BLOCK:
            raise ValueError(f"in_features {self.in_features} must be a multiple of {BLOCK}")
        self.splits = tuple(part.shape[0] for part in parts)
        self.group = weight.group
        self.kernel_path = kernel_path(path)
        if self.kernel_path != FALLBACK:
            packed = pack(weight)
            self.scale_bytes, self.has_mins = packed.scale_bytes, packed.mins
            self.register_buffer("packed", packed.data, persistent=False)
            self.bytes = packed.bytes
            self.unpacked: GroupQuantized | None = None  # the fallback's copy
        else:
            self.unpacked = weight
            self.bytes = sum(t.numel() * t.element_size()
                             for t in (weight.values, weight.scales, weight.mins) if t is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] (float32 or bf16) -> float32 [..., out_features]."""
        if self.unpacked is None:  # the op takes any leading shape and dtype
            return torch.ops.specdec.group_gemm(x, self.packed, self.out_features, self.group,
                                                self.scale_bytes, self.has_mins, self.kernel_path)
        rows = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        y = group_fallback.group_gemm(rows, self.unpacked)
        return y.view(*x.shape[:-1], self.out_features)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One product, split into the stacked weights' outputs (views)."""
        return torch.split(self.forward(x), self.splits, dim=-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"splits={self.splits}, group={self.group}, path={self.kernel_path}")
