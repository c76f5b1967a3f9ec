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


def causal_mask(query_positions: torch.Tensor, length: int) -> torch.Tensor:
    """Which keys each query may not see, built once per forward and shared by every layer:
    [R|1, 1, length / KEY_BLOCK, M', KEY_BLOCK], True where hidden; key j is visible to the
    query at t iff j <= t. query_positions [R|1, M]; M' = max(M, MIN_QUERY_ROWS), the extra
    rows repeating the last query (the products' kernels differ below MIN_QUERY_ROWS)."""
    if length % KEY_BLOCK:
        raise ValueError(f"key length {length} is not a multiple of {KEY_BLOCK}")
    query_positions = pad_rows(query_positions, MIN_QUERY_ROWS, dim=1)
    key_index = torch.arange(length, device=query_positions.device).view(-1, 1, KEY_BLOCK)
    return key_index > query_positions[:, None, None, :, None]


def query_chunk(rows: int, heads: int, length: int) -> int:
    """Query rows per call so that a call holds at most SCORES_PER_CALL scores."""
    return max(MIN_QUERY_ROWS, SCORES_PER_CALL // max(1, rows * heads * length))


def blocked_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      hidden: torch.Tensor, scale: float, chunk: int | None = None,
                      ) -> torch.Tensor:
    """Causal attention, q [R, H, M, D]; keys and values [R, H, L, D] with L a multiple of
    KEY_BLOCK; `hidden` from causal_mask (for these M queries and L keys). Returns [R, H, M, D]
    in q's dtype. chunk: query rows per call (long query blocks, prefill, run in pieces: a
    row's result does not depend on the rows beside it); None runs every query in one call."""
    m = q.shape[2]
    if chunk is None or m <= chunk:
        return _attend(q, keys, values, hidden, scale)
    return torch.cat([_attend(q[:, :, i:i + chunk], keys, values,
                              hidden[:, :, :, i:i + chunk], scale)
                      for i in range(0, m, chunk)], dim=2)


def pad_rows(x: torch.Tensor, rows: int, dim: int) -> torch.Tensor:
    """x with at least `rows` entries along dim, extra ones repeating the last (query rows
    padded to MIN_QUERY_ROWS here and in tree attention: their outputs are dropped)."""
    missing = rows - x.shape[dim]
    if missing <= 0:
        return x
    last = x.narrow(dim, x.shape[dim] - 1, 1)
    return torch.cat([x, last.expand(*[missing if d == dim % x.ndim else -1
                                       for d in range(x.ndim)])], dim=dim)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            hidden: torch.Tensor, scale: float) -> torch.Tensor:
    m = q.shape[2]
    # a prefill's last chunk may be shorter than MIN_QUERY_ROWS: pad it like the mask is
    hidden = pad_rows(hidden, MIN_QUERY_ROWS, dim=3)
    q = pad_rows(q, hidden.shape[3], dim=2)  # extra rows' outputs are dropped
    kb, vb = key_blocks(keys), key_blocks(values)
    scores = block_scores(q, kb, scale)  # [R, H, n, M, B]
    scores.masked_fill_(hidden, float("-inf"))  # in place: one score tensor at a time
    total, partial = block_partials(scores, scores.amax(dim=(2, 4), keepdim=True), vb)
    return scan_blocks(total, partial)[:, :, :m].to(q.dtype)


# --- the pieces, shared with tree attention (runtime/tree_attention.py) so that a tree node's
# --- arithmetic is the same, op for op, as that of the same token in a line


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
