"""The static KV cache: its tensors and each row's cached length, in one owner.

Keys and values per layer, [rows, kv_heads, capacity, head_dim], row r's token t at slot t:
a row is contiguous from slot 0 and rows differ only in how far they reach (their lengths).
Slots past a row's length are never attended (the causal mask admits keys at or before a
query's position) and are overwritten by the row's next write: a rollback moves the length
and nothing else, and a copy moves only the cached positions. The one-row runner
(runtime/static.py) and the batch rows (runtime/rows.py) both keep their cache here; each
decides when to grow and how big (its own policy), this module does the growing, prefill,
rollback, tree paths and row moves, and the lengths change only here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PREFILL_CHUNK = 512  # bounds prefill's activations and attention scores, not just its logits
CAPACITY_STEP = 256  # capacities are multiples of this

# StaticCausalLM.forward_rows: (ids [R, w], positions [1, w], end, cache, keep) -> logits
Forward = Callable[..., torch.Tensor | None]


def rounded_capacity(positions: int) -> int:
    """Positions as a cache allocates them: a multiple of CAPACITY_STEP, at least one step."""
    return -(-max(positions, 1) // CAPACITY_STEP) * CAPACITY_STEP


class StaticKVCache:
    """Keys and values per layer, [rows, kv_heads, capacity, head_dim], written by position."""

    def __init__(self, layers: int, rows: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (rows, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def view(self, start: int, stop: int) -> StaticKVCache:
        """Rows start..stop-1 as a cache sharing this one's storage (no copy)."""
        part = object.__new__(StaticKVCache)
        part.keys = [k[start:stop] for k in self.keys]
        part.values = [v[start:stop] for v in self.values]
        return part

    def write(self, target: int, source: StaticKVCache, length: int) -> None:
        """Every row of `source`, its first `length` positions, over rows target.. here (the
        one copy: growth, a joining row, a prefill copied from another runner, a row move)."""
        stop = target + source.rows
        for mine, theirs in zip(self.keys + self.values, source.keys + source.values,
                                strict=True):
            mine[target:stop, :, :length] = theirs[:, :, :length]

    def keep_paths(self, starts: list[int], paths: list[list[int]]) -> None:
        """Row r's tree nodes paths[r] (node i at slot starts[r] + i, a root path in order)
        moved to consecutive slots from starts[r]: one gather and one write per tensor for
        every row (the gather copies the sources first: overlapping moves are safe)."""
        moves = [(row, start + i, start + node)
                 for row, (start, nodes) in enumerate(zip(starts, paths, strict=True))
                 for i, node in enumerate(nodes) if node != i]
        if not moves:
            return
        device = self.keys[0].device
        row, target, source = (torch.tensor(column, device=device)
                               for column in zip(*moves, strict=True))
        for tensor in self.keys + self.values:
            tensor[row, :, target] = tensor[row, :, source]

    def mark_for_compile(self, cuda_graphs: bool) -> None:
        """Capacity (dim 2) a dynamic dimension of the compiled steps, so a regrown cache
        reuses their graphs; for CUDA graphs, static addresses (the buffers are mutated in
        place, not copied in) without an address guard: a regrown cache re-records the
        graphs, it does not recompile them."""
        for tensor in self.keys + self.values:
            torch._dynamo.mark_dynamic(tensor, 2)
            if cuda_graphs:
                torch._dynamo.mark_static_address(tensor, guard=False)


def prefill_chunks(forward: Forward, ids: torch.Tensor, cache: StaticKVCache, begin: int,
                   stop: int, chunk: int = PREFILL_CHUNK) -> None:
    """Write the keys and values of ids[:, begin:stop] (one row of `cache` each) at positions
    begin..stop-1, `chunk` positions per forward, computing no logits."""
    for start in range(begin, stop, chunk):
        end = min(start + chunk, stop)
        positions = torch.arange(start, end, device=ids.device)[None]
        forward(ids[:, start:end], positions, end, cache, keep=0)


class KVCache:
    """A static cache's tensors and its rows' bookkeeping: each row's cached length and the
    first slot of its last tree (until the tree's paths are accepted or anything else
    changes the rows). Rows 0..count-1 are cached; the tensors may hold more."""

    def __init__(self, allocate: Callable[[int, int], StaticKVCache], rows: int = 0):
        self._allocate = allocate  # (rows, positions) -> an empty cache of at least that
        self.tensors: StaticKVCache | None = None
        self._lengths = [0] * rows
        self._tree_starts: list[int] | None = None

    @property
    def count(self) -> int:
        """Rows cached."""
        return len(self._lengths)

    @property
    def lengths(self) -> list[int]:
        """Cached positions per row (a copy)."""
        return list(self._lengths)

    def covers(self, rows: int, positions: int) -> bool:
        """Whether the tensors hold `rows` rows of `positions` positions already."""
        return self.tensors is not None and self.tensors.rows >= rows and \
            self.tensors.capacity >= positions

    def resize(self, rows: int, positions: int) -> None:
        """New tensors of `rows` rows and `positions` positions (as allocate rounds them), the
        cached rows' positions copied over."""
        grown = self._allocate(rows, positions)
        old, kept = self.tensors, min(self.count, rows)
        length = max(self._lengths[:kept], default=0)
        if old is not None and length:
            grown.write(0, old.view(0, kept), length)
        self.tensors = grown

    def clear(self) -> None:
        """No rows cached; the tensors are kept for the next ones."""
        self._lengths, self._tree_starts = [], None

    def free(self) -> None:
        """No rows and no tensors: the memory goes back."""
        self.clear()
        self.tensors = None

    def add_rows(self, forward: Forward, ids: torch.Tensor, lengths: list[int],
                 chunk: int = PREFILL_CHUNK) -> None:
        """Prefill ids [n, T] as rows count..count+n-1 (the tensors must hold them), row i
        caching lengths[i] positions; its tokens past that are padding, left past its
        length and overwritten later."""
        first = self.count
        assert self.tensors is not None
        prefill_chunks(forward, ids, self.tensors.view(first, first + len(lengths)), 0,
                       ids.shape[1], chunk)
        self._added(lengths)

    def add_copied(self, source: StaticKVCache, lengths: list[int]) -> None:
        """Rows count..count+n-1 copied from source's rows 0..n-1, row i's first lengths[i]
        positions (the tensors must hold them)."""
        assert self.tensors is not None
        self.tensors.write(self.count, source.view(0, len(lengths)), max(lengths, default=0))
        self._added(lengths)

    def _added(self, lengths: list[int]) -> None:
        self._lengths.extend(lengths)
        self._tree_starts = None  # rows changed: a tree before this is not kept any more

    def advance(self, width: int, tree: bool = False) -> None:
        """Every row cached `width` more positions (written by the caller's forward, which
        grew the tensors first); `tree`: they are a tree's nodes, to accept paths of."""
        self._tree_starts = list(self._lengths) if tree else None
        self._lengths = [n + width for n in self._lengths]

    def rollback(self, counts: list[int]) -> None:
        """Drop the last counts[i] cached positions of row i."""
        if len(counts) != self.count:
            raise ValueError(f"rollback needs a count per row: {len(counts)} for {self.count}")
        for i, (n, length) in enumerate(zip(counts, self._lengths, strict=True)):
            if n < 0 or n > length:
                where = f" of row {i}" if self.count > 1 else ""
                raise ValueError(f"cannot roll back {n} of {length} cached positions{where}")
        self._lengths = [length - n for length, n in zip(self._lengths, counts, strict=True)]
        self._tree_starts = None  # slots past the lengths are masked, then overwritten

    def accept_paths(self, paths: list[list[int]]) -> None:
        """After a tree: row i keeps paths[i] (a root path, in order) at consecutive slots
        from its tree's start, their keys and values moved once; the other nodes are
        forgotten."""
        starts = self._tree_starts
        if starts is None:
            raise RuntimeError("accepting a path needs a tree extend before it")
        if len(paths) != self.count:
            raise ValueError(f"accepting paths needs a path per row: {len(paths)} for "
                             f"{self.count}")
        for row, (start, nodes) in enumerate(zip(starts, paths, strict=True)):
            if any(not 0 <= node < self._lengths[row] - start for node in nodes):
                where = f"row {row}'s" if self.count > 1 else "the"
                raise ValueError(f"nodes {nodes} are not in {where} last tree")
        assert self.tensors is not None
        self.tensors.keep_paths(starts, paths)
        self._lengths = [start + len(nodes) for start, nodes in zip(starts, paths, strict=True)]
        self._tree_starts = None

    def remove(self, index: int) -> None:
        """Drop row `index`; the last row takes its index (its positions copied once)."""
        last = self.count - 1
        if not 0 <= index <= last:
            raise IndexError(f"no row {index} among {self.count}")
        if index != last:
            assert self.tensors is not None
            self.tensors.write(index, self.tensors.view(last, last + 1), self._lengths[last])
            self._lengths[index] = self._lengths[last]
        self._lengths.pop()
        self._tree_starts = None
