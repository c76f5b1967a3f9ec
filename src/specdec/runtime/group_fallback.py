"""The low-bit product in plain torch, with the compiled kernel's numerics (group_gemm.cpp).

Used where the extension cannot be built or loaded. Each row is quantized per 32 inputs to
int8 (scale max|x| / 127, round to nearest even); the integer sums per weight group are exact
(float32 products of integers below 2^24); the per-output accumulation over groups runs in
the kernel's order with a correctly rounded float32 fused multiply-add (emulated in float64
with round-to-odd), so the result equals the kernel's bit for bit. Slow: a few torch ops per
group, for tests and machines without a compiler.
"""

from __future__ import annotations

import torch

from specdec.runtime.group_weights import GroupQuantized

BLOCK = 32  # activation inputs per scale
CHUNK_OUTPUTS = 8192  # outputs per integer product, to bound the float copy of the weight


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x float32 [R, K] -> (q, d): integers in [-127, 127] as float32 [R, K], scales [R, K/32]."""
    blocks = x.view(x.shape[0], x.shape[1] // BLOCK, BLOCK)
    amax = blocks.abs().amax(dim=-1)
    d = torch.div(amax, torch.full_like(amax, 127.0))  # a true division, as the kernel's
    inverse = torch.where(d != 0, torch.div(torch.ones_like(d), d), torch.zeros_like(d))
    q = torch.round(blocks * inverse[..., None]).clamp(-127, 127)
    return q.view_as(x), d


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c rounded once to float32 (as fmaf): the float64 sum rounded to odd, then to
    float32, is correctly rounded since 53 >= 2 * 24 + 2 bits."""
    product = a.double() * b.double()  # exact: 24 + 24 bits
    c = c.double()
    total = product + c
    back = total - product
    error = (product - (total - back)) + (c - back)  # TwoSum: total + error is exact
    even = (total.view(torch.int64) & 1) == 0
    odd = torch.nextafter(total, torch.where(error > 0, torch.inf, -torch.inf).double())
    return torch.where((error != 0) & even, odd, total).float()


def group_gemm(x: torch.Tensor, weight: GroupQuantized) -> torch.Tensor:
    """x float32 [R, K] times weight^T -> float32 [R, N], as the compiled kernel computes it."""
    n, k = weight.shape
    group, groups = weight.group, k // weight.group
    q, d = quantize_rows(x)
    sx = d[:, torch.arange(groups) * group // BLOCK]  # [R, groups]
    qg = q.view(-1, groups, group).permute(1, 0, 2)  # [groups, R, group]
    min_term = sx * qg.sum(dim=-1).T if weight.mins is not None else None
    outputs = []
    for start in range(0, n, CHUNK_OUTPUTS):
        part = slice(start, min(n, start + CHUNK_OUTPUTS))
        w = weight.values[part].float().view(-1, groups, group).permute(1, 2, 0)
        sums = torch.bmm(qg, w)  # [groups, R, n_part], exact integers
        scales = weight.scales[part]
        acc = torch.zeros(x.shape[0], w.shape[-1])
        for g in range(groups):
            acc = fma32(sums[g], scales[None, :, g] * sx[:, g, None], acc)
            if weight.mins is not None and min_term is not None:
                acc = fma32(-weight.mins[None, part, g], min_term[:, g, None], acc)
        outputs.append(acc)
    return torch.cat(outputs, dim=1)
