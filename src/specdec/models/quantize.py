"""Weight-only int8 linear layers, for drafters.

On CPU a one-token forward is bound by reading weights: int8 weights (per-output-channel
scales, torch's `_weight_int8pack_mm` kernel) make it ~2-3x faster than bf16. Multi-token
passes gain nothing, so this is for drafting, not verifying. A drafter's precision never
touches exactness: verification against the target's p corrects whatever q it proposes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 rows and one scale per output feature."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.register_buffer("qweight", (weight / scales[:, None]).round().clamp(-127, 127)
                             .to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                 requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weights (shape [out, in]): enough for callers that read shapes."""
        return self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """model (or a copy) with every nn.Linear replaced by Int8Linear, the output head too."""
    model = model if inplace else copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return model
