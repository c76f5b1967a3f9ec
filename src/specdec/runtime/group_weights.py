"""Weights stored as small integers with a scale (and optionally a minimum) per group of inputs.

The one representation the low-bit runner computes with, whatever the source: GGUF blocks
(Q8_0, Q5_0, Q6_K, Q4_K, ...) map onto it without rounding anything, since each of those
formats is an integer times a per-group scale (minus a per-group minimum for the "_1" and K
formats):

    W[n, k] = scales[n, k // group] * values[n, k] - mins[n, k // group]     (mins None: 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUPS = (16, 32)  # inputs per scale: 32 for the _0/_1 formats and Q4_K, 16 for Q6_K


@dataclass
class GroupQuantized:
    """An [out, in] weight as int8 values with float32 scales (and mins) per `group` inputs."""

    values: torch.Tensor  # int8 [N, K]
    scales: torch.Tensor  # float32 [N, K // group]
    mins: torch.Tensor | None  # float32 [N, K // group], or None where every minimum is 0
    group: int

    def __post_init__(self) -> None:
        n, k = self.values.shape
        if self.group not in GROUPS or k % self.group:
            raise ValueError(f"group {self.group} must be one of {GROUPS} and divide {k}")
        if self.values.dtype != torch.int8:
            raise ValueError(f"values must be int8, got {self.values.dtype}")
        shape = (n, k // self.group)
        for name in ("scales", "mins"):
            tensor = getattr(self, name)
            if tensor is not None and (tensor.shape != shape or tensor.dtype != torch.float32):
                raise ValueError(f"{name} must be float32 {list(shape)}, got "
                                 f"{tensor.dtype} {list(tensor.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.values.shape[0]), int(self.values.shape[1]))

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` dequantized to float32 (an embedding lookup), [*index.shape, K]."""
        scales = self.scales[index].repeat_interleave(self.group, dim=-1)
        weight = self.values[index].float() * scales
        if self.mins is not None:
            weight = weight - self.mins[index].repeat_interleave(self.group, dim=-1)
        return weight

    def dequantize(self) -> torch.Tensor:
        """The whole weight in float32 [N, K] (tests and references; never per step)."""
        return self.rows(torch.arange(self.shape[0]))

    @staticmethod
    def from_float(weight: torch.Tensor, group: int = 32) -> GroupQuantized:
        """Symmetric int8 per `group` inputs (scale max|w| / 127): for float weights only; a
        GGUF's integer blocks map onto GroupQuantized exactly and are never requantized."""
        n, k = weight.shape
        blocks = weight.detach().float().reshape(n, k // group, group)
        scales = blocks.abs().amax(-1) / 127
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        values = torch.round(blocks / safe[..., None]).clamp(-127, 127).to(torch.int8)
        return GroupQuantized(values.reshape(n, k), scales, None, group)

    @staticmethod
    def stack(parts: list[GroupQuantized]) -> GroupQuantized:
        """Several weights that read the same input as one [sum N, K] weight (q/k/v, gate/up);
        minimums are kept where any part has them."""
        groups = {p.group for p in parts}
        if len(groups) != 1:
            raise ValueError(f"cannot stack weights of groups {sorted(groups)}")
        mins = None
        if any(p.mins is not None for p in parts):
            mins = torch.cat([p.mins if p.mins is not None else torch.zeros_like(p.scales)
                              for p in parts])
        return GroupQuantized(torch.cat([p.values for p in parts]),
                              torch.cat([p.scales for p in parts]), mins, groups.pop())
