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
    m = q.shape[2]
    length = keys.shape[2]
    q, query_positions = pad_queries(q, query_positions)
    kb, vb = key_blocks(keys), key_blocks(values)
    blocks = kb.shape[2]
    scores = block_scores(q, kb, scale)  # [R, H, n, M, B]
    key_index = torch.arange(length, device=q.device).view(blocks, 1, KEY_BLOCK)
    hidden = key_index > query_positions[:, None, None, :, None]  # [R|1, 1, n, M, B]
    scores.masked_fill_(hidden, float("-inf"))  # in place: one score tensor at a time
    total, partial = block_partials(scores, scores.amax(dim=(2, 4), keepdim=True), vb)
    return scan_blocks(total, partial)[:, :, :m].to(q.dtype)


# --- the pieces, shared with tree attention (models/tree_attention.py) so that a tree node's
# --- arithmetic is the same, op for op, as that of the same token in a line


def pad_queries(q: torch.Tensor, query_positions: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """At least MIN_QUERY_ROWS query rows: extra rows repeat the last query (outputs dropped)."""
    rows, heads, m, dim = q.shape
    padded = max(m, MIN_QUERY_ROWS)
    if padded == m:
        return q, query_positions
    q = torch.cat([q, q[:, :, -1:].expand(rows, heads, padded - m, dim)], dim=2)
    query_positions = torch.cat(
        [query_positions, query_positions[:, -1:].expand(-1, padded - m)], dim=1)
    return q, query_positions


def key_blocks(keys: torch.Tensor) -> torch.Tensor:
    """[R, H, L, D] -> [R, H, L / KEY_BLOCK, KEY_BLOCK, D] in float32."""
    rows, heads, length, dim = keys.shape
    if length % KEY_BLOCK:
        raise ValueError(f"key length {length} is not a multiple of {KEY_BLOCK}")
    return keys.float().view(rows, heads, length // KEY_BLOCK, KEY_BLOCK, dim)


def block_scores(q: torch.Tensor, kb: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled scores per key block, [R, H, n, M, B]; one product of inner length D each."""
    return (q.float()[:, :, None] @ kb.transpose(-1, -2)) * scale


def block_partials(scores: torch.Tensor, peak: torch.Tensor, vb: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(scores - peak) summed per block [R, H, n, M] and applied to the values per block
    [R, H, n, M, D]. Consumes `scores` (in place)."""
    weights = scores.sub_(peak).exp_()
    return weights.sum(dim=-1), weights @ vb


def scan_blocks(total: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
    """Blocks summed by a scan (sequential, accumulated in double on the CPU): torch's sum
    over the block axis rounds differently with the number of query rows beside it.
    total [R, H, n, M], partial [R, H, n, M, D] -> [R, H, M, D]."""
    return partial.cumsum(dim=2)[:, :, -1] / total.cumsum(dim=2)[:, :, -1][..., None]
