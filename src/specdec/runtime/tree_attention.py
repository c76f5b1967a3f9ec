"""Attention for a token tree verified in one forward, with a line's arithmetic per node.

A tree of N nodes is written to the cache at slots start .. start + N - 1 (node i at slot
start + i, parents before children). Node i must see the committed context (slots < start) and
its own ancestors only. Masking the other nodes out of one block of keys would give the right
values but not the same bits as the line that verifies the same path: inside a key block the
ancestors would sit at other offsets, and a block's sums round with where their terms sit.

So each node attends as the line would lay its path out. The committed blocks that lie wholly
before `start` are shared by all nodes (one product, every node a query row); the last
partial block of context plus the node's path (gathered to consecutive slots after the
context, exactly where a line extend would have written them) form the node's own tail
blocks. Both parts go through the same pieces as `blocked_attention` (one global maximum,
exp, per-block sums, one sequential scan over the blocks in order): a node's output is the
same bits as that token's row in a line extend of its root path (tests/test_tree_runner.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.runtime.attention import (
    KEY_BLOCK,
    MIN_QUERY_ROWS,
    block_partials,
    block_scores,
    key_blocks,
    pad_rows,
    scan_blocks,
)


@dataclass(frozen=True)
class TreeLayout:
    """Where a tree's nodes sit, built once per forward (the same for every layer)."""

    start: int  # first node's slot = committed context length
    slots: torch.Tensor  # [N] cache slot of each node: start + i
    positions: torch.Tensor  # [1, N] token positions (rotary): start + depth
    head: int  # slots [0, head) are whole committed blocks, shared by every node
    gather: torch.Tensor  # [N, T] cache slot at each of a node's tail offsets
    tail_positions: torch.Tensor  # [N, 1] a node's position counted from `head`
    ancestors: torch.Tensor  # [N, N] bool: node j is node i's ancestor or node i itself

    @property
    def nodes(self) -> int:
        return int(self.slots.shape[0])


def tree_depths(parents: list[int]) -> list[int]:
    """Depth of each node (roots, parent -1, at 0); parents must come before children."""
    depths: list[int] = []
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise ValueError(f"node {i}'s parent {parent} is not an earlier node or -1")
        depths.append(0 if parent < 0 else depths[parent] + 1)
    return depths


def root_path(parents: list[int], node: int) -> list[int]:
    """Nodes from the root down to `node`, inclusive."""
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def is_chain(parents: list[int]) -> bool:
    """Whether the tree is a line: node i's parent is i - 1."""
    return all(parent == i - 1 for i, parent in enumerate(parents))


def tree_layout(parents: list[int], start: int, device: torch.device) -> TreeLayout:
    depths = tree_depths(parents)
    n = len(parents)
    head = start // KEY_BLOCK * KEY_BLOCK
    reach = start + max(depths, default=0) + 1  # one past the deepest node's line slot
    tail = -(-reach // KEY_BLOCK) * KEY_BLOCK - head
    gather = torch.zeros(n, tail, dtype=torch.long)
    gather[:, : start - head] = torch.arange(head, start)
    ancestors = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        path = root_path(parents, i)
        gather[i, start - head: start - head + len(path)] = start + torch.tensor(path)
        ancestors[i, path] = True
    # offsets past a node's depth hold slot 0 (any slot: they are masked)
    return TreeLayout(
        start=start, slots=torch.arange(start, start + n, device=device),
        positions=(start + torch.tensor(depths, device=device))[None], head=head,
        gather=gather.to(device),
        tail_positions=(start - head + torch.tensor(depths, device=device))[:, None],
        ancestors=ancestors.to(device))


def tree_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   layout: TreeLayout, scale: float) -> torch.Tensor:
    """q [1, H, G * N, D] (query g * N + i: node i's g-th query head of key head h); keys and
    values [1, H, L, D] with the nodes already written at layout.slots. Returns
    [1, H, G * N, D] in q's dtype."""
    _, heads, rows, dim = q.shape
    n = layout.nodes
    groups = rows // n
    # the shared committed blocks: every node is a query row
    head_q = pad_rows(q, MIN_QUERY_ROWS, dim=2)
    padded = head_q.shape[2]
    # the tails: node i is row i, its query heads the rows of that row
    tail_q = q[0].view(heads, groups, n, dim).permute(2, 0, 1, 3)  # [N, H, G, D]
    tail_q = pad_rows(tail_q, MIN_QUERY_ROWS, dim=2)
    tail_rows = tail_q.shape[2]
    tail_k = key_blocks(keys[0][:, layout.gather].transpose(0, 1))  # [N, H, t, B, D]
    tail_v = key_blocks(values[0][:, layout.gather].transpose(0, 1))
    tail_scores = block_scores(tail_q, tail_k, scale)  # [N, H, t, G', B]
    blocks = tail_k.shape[2]
    offset = torch.arange(blocks * KEY_BLOCK, device=q.device).view(blocks, 1, KEY_BLOCK)
    hidden = offset > layout.tail_positions[:, None, None, :, None]  # [N, 1, t, 1, B]
    tail_scores.masked_fill_(hidden, float("-inf"))
    tail_peak = tail_scores.amax(dim=(2, 4), keepdim=True)  # [N, H, 1, G', 1]
    peak = _to_rows(tail_peak[:, :, 0, :groups, 0], padded)  # [1, H, M']
    if layout.head:
        head_k = key_blocks(keys[:, :, : layout.head])
        head_v = key_blocks(values[:, :, : layout.head])
        head_scores = block_scores(head_q, head_k, scale)  # [1, H, n, M', B]
        peak = torch.maximum(peak, head_scores.amax(dim=(2, 4)))
    # the same peak for a node's row in both parts (the global maximum of a line's row)
    tail_total, tail_partial = block_partials(tail_scores, _to_tails(peak, n, groups,
                                                                     tail_rows), tail_v)
    total = _to_rows(tail_total[:, :, :, :groups].permute(0, 1, 3, 2), padded)  # [1,H,M',t]
    partial = _to_rows(tail_partial[:, :, :, :groups].permute(0, 1, 3, 2, 4), padded)
    total, partial = total.transpose(2, 3), partial.transpose(2, 3)  # [1, H, t, M'(, D)]
    if layout.head:
        head_total, head_partial = block_partials(head_scores, peak[:, :, None, :, None],
                                                  head_v)
        total = torch.cat([head_total, total], dim=2)
        partial = torch.cat([head_partial, partial], dim=2)
    return scan_blocks(total, partial)[:, :, :rows].to(q.dtype)


def tree_rows_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        layouts: list[TreeLayout], scale: float) -> torch.Tensor:
    """tree_attention for batch rows, row r's tree laid out by layouts[r] (q [R, H, G * N, D],
    keys and values [R, H, L, D]): row by row, so that each node's arithmetic is that of its
    tree alone (and of the line of its root path). The rows' other work (projections, MLPs)
    is one batched forward; only this part runs per row."""
    if len(layouts) == 1:
        return tree_attention(q, keys, values, layouts[0], scale)
    return torch.cat([tree_attention(q[r:r + 1], keys[r:r + 1], values[r:r + 1], layout, scale)
                      for r, layout in enumerate(layouts)])


def _to_rows(per_node: torch.Tensor, padded: int) -> torch.Tensor:
    """[N, H, G, ...] per node -> [1, H, M', ...] in the shared rows' order (g * N + i),
    padded like `pad_rows` (extra rows repeat the last)."""
    n, heads, groups = per_node.shape[:3]
    rows = per_node.permute(1, 2, 0, *range(3, per_node.ndim)).reshape(
        1, heads, groups * n, *per_node.shape[3:])
    extra = padded - groups * n
    if extra:
        rows = torch.cat([rows, rows[:, :, -1:].expand(1, heads, extra, *rows.shape[3:])], 2)
    return rows


def _to_tails(peak: torch.Tensor, n: int, groups: int, tail_rows: int) -> torch.Tensor:
    """The shared rows' peak [1, H, M'] -> [N, H, 1, G', 1] for the tails (padded rows
    repeat a node's last query head)."""
    heads = peak.shape[1]
    per_node = peak[0, :, : groups * n].view(heads, groups, n).permute(2, 0, 1)  # [N, H, G]
    extra = tail_rows - groups
    if extra:
        per_node = torch.cat([per_node, per_node[:, :, -1:].expand(n, heads, extra)], 2)
    return per_node[:, :, None, :, None]
