"""Attention whose result for a query row does not depend on what else is in the call.

`F.scaled_dot_product_attention` on the CPU rounds a query row differently depending on how
many queries share the call and how many keys it spans (its GEMMs pick kernels and blockings
by shape), so a token's attention output in a k-token verification differed from its
one-token decode. Here the keys are split into fixed blocks of `KEY_BLOCK` from position 0:
every product has a fixed inner length (the head dimension, or one block of keys), blocks past
a query's position are masked to exact zeros, and the blocks are summed by a sequential scan
(so trailing zero blocks change nothing). Query rows
are padded to at least `MIN_QUERY_ROWS` (the products' kernels differ below it). Float32
throughout, so a bfloat16 model's attention is at least as accurate as before.
"""

from __future__ import annotations

import torch

KEY_BLOCK = 64
MIN_QUERY_ROWS = 4
SCORES_PER_CALL = 1 << 21  # bounds a call's score tensor (8 MB in float32)


def key_span(end: int, capacity: int) -> int:
    """Keys to read for queries ending before `end`: whole blocks, within the buffer."""
    return min(capacity, -(-end // KEY_BLOCK) * KEY_BLOCK)


def blocked_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      query_positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention, q [R, H, M, D] at query_positions [R or 1, M]; keys and values
    [R, H, L, D] with L a multiple of KEY_BLOCK; key j is visible to a query at t iff j <= t.
    Returns [R, H, M, D] in q's dtype. Long query blocks (prefill) run in pieces of at most
    SCORES_PER_CALL scores: a row's result does not depend on the rows beside it."""
    rows, heads, m, _ = q.shape
    step = max(MIN_QUERY_ROWS, SCORES_PER_CALL // max(1, rows * heads * keys.shape[2]))
    if m <= step:
        return _attend(q, keys, values, query_positions, scale)
    return torch.cat([_attend(q[:, :, i:i + step], keys, values,
                              query_positions[:, i:i + step], scale)
                      for i in range(0, m, step)], dim=2)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            query_positions: torch.Tensor, scale: float) -> torch.Tensor:
    rows, heads, m, dim = q.shape
    length = keys.shape[2]
    if length % KEY_BLOCK:
        raise ValueError(f"key length {length} is not a multiple of {KEY_BLOCK}")
    padded = max(m, MIN_QUERY_ROWS)
    if padded > m:  # extra rows repeat the last query; their outputs are dropped
        q = torch.cat([q, q[:, :, -1:].expand(rows, heads, padded - m, dim)], dim=2)
        query_positions = torch.cat(
            [query_positions, query_positions[:, -1:].expand(-1, padded - m)], dim=1)
    blocks = length // KEY_BLOCK
    kb = keys.float().view(rows, heads, blocks, KEY_BLOCK, dim)
    vb = values.float().view(rows, heads, blocks, KEY_BLOCK, dim)
    scores = (q.float()[:, :, None] @ kb.transpose(-1, -2)) * scale  # [R, H, n, M, B]
    key_index = torch.arange(length, device=q.device).view(blocks, 1, KEY_BLOCK)
    hidden = key_index > query_positions[:, None, None, :, None]  # [R|1, 1, n, M, B]
    scores.masked_fill_(hidden, float("-inf"))  # in place: one score tensor at a time
    weights = scores.sub_(scores.amax(dim=(2, 4), keepdim=True)).exp_()
    # blocks summed by a scan (sequential, accumulated in double on the CPU): torch's sum
    # over the block axis rounds differently with the number of query rows beside it
    total = weights.sum(dim=-1).cumsum(dim=2)[:, :, -1]  # [R, H, M]
    out = (weights @ vb).cumsum(dim=2)[:, :, -1] / total[..., None]
    return out[:, :, :m].to(q.dtype)
