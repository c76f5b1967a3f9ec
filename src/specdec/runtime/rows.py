"""Batch rows: several sequences in one target forward, each at its own length.

How ragged lengths live in the cache: one static buffer [rows, kv_heads, capacity, head_dim]
per layer, each row written at its OWN positions (row i's token t at slot t). A row's cache
is therefore always contiguous from slot 0; rows differ only in how far they reach. A step
feeds every row a block of the same width (shorter blocks padded); row i's tokens sit at
positions length_i .. length_i + w - 1, and the causal mask (key j visible to the query at
position t iff j <= t) hides both the other rows' longer reach and a row's own padding.
Rollback per row moves that row's length; the padded slots past it are overwritten later.
Active rows are kept at indices 0..n-1: a leaving row is replaced by the last one (its
positions copied once), so a step runs on a view of the first n rows and never gathers.
The price is attention over the longest row's length for every row (measured in
benchmarks/batch.py against per-row forwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from specdec.language_model import LanguageModel
from specdec.runtime.hf import HFModel
from specdec.runtime.kv_cache import PREFILL_CHUNK, StaticKVCache, rounded_capacity
from specdec.runtime.static import StaticCausalLM
from specdec.runtime.tree_attention import tree_layout


@runtime_checkable
class Rows(Protocol):
    """Sequences that share target forwards; row i is the i-th added and not removed."""

    max_rows: int
    device: torch.device

    @property
    def count(self) -> int:
        """Active rows."""
        ...

    def add(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        """Prefill prompt_ids [1, T] as row `count`; return its decoder context [1, T']."""
        ...

    def add_many(self, prompts: list[torch.Tensor], reserve: int = 0) -> list[torch.Tensor]:
        """add() for several prompts, in as few forwards as the runner can."""
        ...

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed tokens [count, w] (one block per row) in ONE forward; logits [count, w, V]."""
        ...

    def rollback(self, counts: list[int]) -> None:
        """Drop the last counts[i] cached positions of row i."""
        ...

    # Whether extend_tree verifies branching trees; False: lines only (use extend)
    verifies_trees: bool

    def extend_tree(self, tokens: torch.Tensor, parents: list[list[int]]) -> torch.Tensor:
        """Feed one token tree per row, tokens [count, N], in ONE forward; logits
        [count, N, V]. parents[i]: row i's parent per node (LanguageModel.extend_tree), at
        most N; the nodes past them are padding (their logits mean nothing). Every row's
        cached length grows by N until `accept_paths`."""
        ...

    def accept_paths(self, paths: list[list[int]]) -> None:
        """After extend_tree: row i keeps paths[i] (a root path of its tree, in order) as its
        next positions, its keys and values moved once; the other nodes are forgotten."""
        ...

    def remove(self, index: int) -> None:
        """Drop row `index`; the last row takes its index."""
        ...

    def start(self, prompt_ids: torch.Tensor, reserve: int = 0) -> Joining:
        """Begin a row's prefill, to be run in pieces (`prefill`) between steps."""
        ...

    def prefill(self, joining: Joining, tokens: int | None) -> int:
        """Prefill up to `tokens` more positions of `joining` (None: all); returns how many."""
        ...

    def join(self, joining: Joining) -> torch.Tensor:
        """Make a finished prefill row `count`; return its decoder context [1, T']."""
        ...

    def abandon(self, joining: Joining) -> None:
        """Forget a prefill that will not join (its memory is returned)."""
        ...

    def fits(self, prompt_length: int, positions: int) -> bool:
        """Whether one more row (a prompt of prompt_length tokens, reaching `positions`
        cached positions) fits the cache budget beside the rows and prefills here now."""
        ...

    def cache_bytes(self, rows: int, positions: int) -> int:
        """Bytes of a cache of `rows` rows of `positions` positions (0 when unknown)."""
        ...


@dataclass(eq=False)
class Joining:
    """A row being prefilled: the prompt, the positions it reserves and how far it got."""

    prompt_ids: torch.Tensor  # [1, T]; the last token stays pending, never cached
    reserve: int
    done: int = 0  # positions prefilled
    cache: StaticKVCache | None = None  # its own one-row cache until it joins
    context: torch.Tensor | None = None  # a runner that prefills at once: its context

    @property
    def length(self) -> int:
        """Positions to prefill."""
        return self.prompt_ids.shape[1] - 1

    @property
    def finished(self) -> bool:
        return self.done >= self.length

    @property
    def positions(self) -> int:
        """Cached positions the row may reach: the prompt, the pending token and reserve."""
        return self.length + 1 + max(self.reserve, 0)


class CacheBudgetError(RuntimeError):
    """A row would take the KV cache past its memory budget."""


class SingleRow:
    """One row over any LanguageModel's own cache (the batch-1 path, every architecture)."""

    max_rows = 1

    def __init__(self, model: LanguageModel, max_bytes: int | None = None):
        self.model = model
        self.device = model.device
        self.max_bytes = max_bytes  # the one row's cache (None: unbounded)
        self._active = False

    @property
    def count(self) -> int:
        return int(self._active)

    def add(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        if self._active:
            raise RuntimeError(f"{self.model.name} runs one row at a time")
        context = self.model.prefill(prompt_ids, reserve=reserve)
        self._active = True
        return context

    def add_many(self, prompts: list[torch.Tensor], reserve: int = 0) -> list[torch.Tensor]:
        return [self.add(p, reserve) for p in prompts]

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.extend(tokens)

    def rollback(self, counts: list[int]) -> None:
        self.model.rollback(counts[0])

    @property
    def verifies_trees(self) -> bool:
        return self.model.verifies_trees

    def extend_tree(self, tokens: torch.Tensor, parents: list[list[int]]) -> torch.Tensor:
        if len(parents) != 1:
            raise ValueError(f"extend_tree needs one tree per row: {len(parents)} for 1")
        return self.model.extend_tree(tokens, padded_parents(parents[0], tokens.shape[1]))

    def accept_paths(self, paths: list[list[int]]) -> None:
        self.model.accept_path(paths[0])

    def remove(self, index: int) -> None:
        self._active = False

    def start(self, prompt_ids: torch.Tensor, reserve: int = 0) -> Joining:
        if self._active:
            raise RuntimeError(f"{self.model.name} runs one row at a time")
        return Joining(prompt_ids, reserve)

    def prefill(self, joining: Joining, tokens: int | None) -> int:
        """The runner's own prefill, all at once (one row: nobody else waits)."""
        if joining.context is None:
            joining.context = self.add(joining.prompt_ids, joining.reserve)
            joining.done = joining.length
            return joining.length
        return 0

    def join(self, joining: Joining) -> torch.Tensor:
        if joining.context is None:
            self.prefill(joining, None)
        assert joining.context is not None
        return joining.context

    def abandon(self, joining: Joining) -> None:
        if joining.context is not None:
            self._active = False

    def fits(self, prompt_length: int, positions: int) -> bool:
        return not self._active and (self.max_bytes is None or
                                     self.cache_bytes(1, positions) <= self.max_bytes)

    def cache_bytes(self, rows: int, positions: int) -> int:
        per = self.model.kv_bytes_per_position if isinstance(self.model, HFModel) else 0
        return rows * positions * per


class StaticRows:
    """Up to max_rows sequences on one static cache of a StaticCausalLM's weights.

    max_bytes bounds the cache: its rows are allocated as they are needed (doubling up to
    max_rows while that fits) and each row reserves the positions its request may reach, so
    a row that would pass the budget is refused (CacheBudgetError) before anything is
    allocated; `fits` tells a scheduler beforehand. When the last row leaves, the cache is
    freed. A prefill run in pieces (`start`/`prefill`/`join`) writes its own one-row cache and
    is copied in when it joins: the rows decoding meanwhile are not touched.
    """

    def __init__(self, model: StaticCausalLM, max_rows: int, max_bytes: int | None = None):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.model = model
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.device = model.device
        self.lengths: list[int] = []  # cached positions per row
        self.tree_starts: list[int] | None = None  # each row's last tree's first slot
        self.reserved: list[int] = []  # positions each row may reach
        self.filling: list[Joining] = []  # prefills in pieces, not yet rows
        self.cache: StaticKVCache | None = None
        self.bytes_per_position = model.kv_bytes_per_position

    @property
    def count(self) -> int:
        return len(self.lengths)

    def cache_bytes(self, rows: int, positions: int) -> int:
        return rows * rounded_capacity(positions) * self.bytes_per_position

    def fits(self, prompt_length: int, positions: int) -> bool:
        if self.count + len(self.filling) >= self.max_rows:
            return False
        if self.max_bytes is None:
            return True
        reach = [*self.reserved, *(j.positions for j in self.filling), positions]
        prefills = sum(self.cache_bytes(1, j.length) for j in [*self.filling])
        return (self.cache_bytes(len(reach), max(reach)) + prefills
                + self.cache_bytes(1, prompt_length) <= self.max_bytes)

    def add(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        return self.add_many([prompt_ids], reserve)[0]

    @torch.inference_mode()
    def add_many(self, prompts: list[torch.Tensor], reserve: int = 0) -> list[torch.Tensor]:
        """Prefill several prompts [1, T_i] as new rows in shared forwards (padded to the
        longest; a row's padding lies past its length and is overwritten later)."""
        if any(p.ndim != 2 or p.shape[0] != 1 for p in prompts):
            raise ValueError("each prompt must be [1, T]")
        first, count = self.count, len(prompts)
        if first + count + len(self.filling) > self.max_rows:
            raise RuntimeError(f"all {self.max_rows} rows are in use")
        lengths = [p.shape[1] - 1 for p in prompts]  # the last token stays pending
        longest = max(lengths, default=0)
        reach = [n + 1 + max(reserve, 0) for n in lengths]
        self._ensure_shape(first + count, max([*self.reserved, *reach]))
        assert self.cache is not None
        rows = self.cache.view(first, first + count)
        ids = torch.zeros(count, longest, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, : lengths[i]] = prompt[0, : lengths[i]]
        ids = ids.to(self.device)
        # the same bound on a chunk's activations and scores as one row's prefill
        chunk = max(1, PREFILL_CHUNK // max(count, 1))
        for start in range(0, longest, chunk):
            stop = min(start + chunk, longest)
            positions = torch.arange(start, stop, device=self.device)[None]
            self.model.forward_rows(ids[:, start:stop], positions, stop, rows, keep=0)
        self.lengths.extend(lengths)
        self.reserved.extend(reach)
        self.tree_starts = None  # rows changed: a tree before this is not kept any more
        return prompts

    def start(self, prompt_ids: torch.Tensor, reserve: int = 0) -> Joining:
        if prompt_ids.ndim != 2 or prompt_ids.shape[0] != 1:
            raise ValueError("the prompt must be [1, T]")
        if self.count + len(self.filling) >= self.max_rows:
            raise RuntimeError(f"all {self.max_rows} rows are in use")
        joining = Joining(prompt_ids, reserve)
        self._check_budget(self.count + len(self.filling) + 1, [joining.positions])
        joining.cache = self.model.new_cache(1, max(joining.length, 1))
        self.filling.append(joining)
        return joining

    @torch.inference_mode()
    def prefill(self, joining: Joining, tokens: int | None) -> int:
        assert joining.cache is not None, "prefill() of a row that was not started here"
        begin = joining.done
        stop = joining.length if tokens is None else min(joining.length, begin + max(tokens, 0))
        ids = joining.prompt_ids[:, :stop].to(self.device)
        for start in range(begin, stop, PREFILL_CHUNK):
            end = min(start + PREFILL_CHUNK, stop)
            positions = torch.arange(start, end, device=self.device)[None]
            self.model.forward_rows(ids[:, start:end], positions, end, joining.cache, keep=0)
        joining.done = stop
        return stop - begin

    @torch.inference_mode()
    def join(self, joining: Joining) -> torch.Tensor:
        if not joining.finished:
            self.prefill(joining, None)
        index = self.count
        self._ensure_shape(index + 1, max([*self.reserved, joining.positions]))
        assert self.cache is not None and joining.cache is not None
        length = joining.length
        for mine, theirs in zip(self.cache.keys + self.cache.values,
                                joining.cache.keys + joining.cache.values, strict=True):
            mine[index, :, :length] = theirs[0, :, :length]
        self.lengths.append(length)
        self.reserved.append(joining.positions)
        self.tree_starts = None
        self.abandon(joining)
        return joining.prompt_ids

    def abandon(self, joining: Joining) -> None:
        joining.cache = None
        if joining in self.filling:
            self.filling.remove(joining)
        self._free_if_idle()

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        rows, width = tokens.shape
        if rows != self.count:
            raise ValueError(f"extend needs one block per row: {rows} blocks, {self.count} rows")
        end = max(self.lengths) + width
        self._ensure_shape(rows, end)
        assert self.cache is not None
        starts = torch.tensor(self.lengths, device=self.device)
        positions = starts[:, None] + torch.arange(width, device=self.device)
        logits = self.model.forward_rows(tokens.to(self.device), positions, end,
                                         self.cache.view(0, rows), keep=width)
        assert logits is not None
        self.lengths = [n + width for n in self.lengths]
        self.tree_starts = None
        return logits.float()

    verifies_trees = True

    @torch.inference_mode()
    def extend_tree(self, tokens: torch.Tensor, parents: list[list[int]]) -> torch.Tensor:
        rows, width = tokens.shape
        if rows != self.count or len(parents) != rows:
            raise ValueError(f"extend_tree needs one tree per row: {rows} blocks, "
                             f"{len(parents)} trees, {self.count} rows")
        end = max(self.lengths) + width
        self._ensure_shape(rows, end)
        assert self.cache is not None
        layouts = [tree_layout(padded_parents(p, width), start, self.device)
                   for p, start in zip(parents, self.lengths, strict=True)]
        logits = self.model.forward_tree(tokens.to(self.device), layouts, end,
                                         self.cache.view(0, rows))
        self.tree_starts = list(self.lengths)
        self.lengths = [n + width for n in self.lengths]
        return logits.float()

    @torch.inference_mode()
    def accept_paths(self, paths: list[list[int]]) -> None:
        starts = self.tree_starts
        if starts is None:
            raise RuntimeError("accept_paths() needs a tree extend before it")
        if len(paths) != self.count:
            raise ValueError(f"accept_paths needs a path per row: {len(paths)} for {self.count}")
        for row, (start, nodes) in enumerate(zip(starts, paths, strict=True)):
            if any(not 0 <= node < self.lengths[row] - start for node in nodes):
                raise ValueError(f"nodes {nodes} are not in row {row}'s last tree")
        assert self.cache is not None
        self.cache.keep_paths(starts, paths)
        self.lengths = [start + len(nodes) for start, nodes in zip(starts, paths, strict=True)]
        self.tree_starts = None

    def rollback(self, counts: list[int]) -> None:
        if len(counts) != self.count:
            raise ValueError(f"rollback needs a count per row: {len(counts)} for {self.count}")
        for i, n in enumerate(counts):
            if n < 0 or n > self.lengths[i]:
                raise ValueError(f"cannot roll back {n} of row {i}'s {self.lengths[i]} positions")
        self.lengths = [length - n for length, n in zip(self.lengths, counts, strict=True)]
        self.tree_starts = None

    @torch.inference_mode()
    def remove(self, index: int) -> None:
        last = self.count - 1
        if not 0 <= index <= last:
            raise IndexError(f"no row {index} among {self.count}")
        if index != last:
            assert self.cache is not None
            self.cache.write(index, self.cache.view(last, last + 1), self.lengths[last])
            self.lengths[index] = self.lengths[last]
            self.reserved[index] = self.reserved[last]
        self.lengths.pop()
        self.reserved.pop()
        self.tree_starts = None
        self._free_if_idle()

    def _check_budget(self, rows: int, reach: list[int]) -> None:
        """CacheBudgetError when `rows` rows reaching max(reach) pass max_bytes."""
        positions = max([*self.reserved, *(j.positions for j in self.filling), *reach])
        if not self._within(rows, positions):
            assert self.max_bytes is not None
            raise CacheBudgetError(
                f"{rows} rows of {positions} positions need "
                f"{self.cache_bytes(rows, positions) / 2**20:.1f} MiB of KV cache; the budget "
                f"is {self.max_bytes / 2**20:.1f} MiB")

    def _within(self, rows: int, positions: int) -> bool:
        return self.max_bytes is None or self.cache_bytes(rows, positions) <= self.max_bytes

    def _ensure_shape(self, rows: int, positions: int) -> None:
        """A cache of at least `rows` rows and `positions` positions, the rows cached so far
        kept. Under a budget, as many rows as it allows are allocated at once (a row joining
        later costs no copy); without one, rows double up to max_rows. Positions grown past
        every reserve (a longer draft block) double where the budget allows."""
        cache = self.cache
        if cache is not None and cache.rows >= rows and cache.capacity >= positions:
            return
        if cache is not None and positions > cache.capacity:
            doubled = max(positions, 2 * cache.capacity)
            positions = doubled if self._within(rows, doubled) else positions
        elif cache is not None:
            positions = max(positions, cache.capacity)
        self._check_budget(rows, [positions])
        if self.max_bytes is not None:
            allowed = self.max_bytes // self.cache_bytes(1, positions)
            rows = min(self.max_rows, max(rows, allowed))
        elif cache is not None:
            rows = min(self.max_rows, max(rows, 2 * cache.rows))
        grown = self.model.new_cache(rows, positions)
        if cache is not None and self.lengths:
            kept, length = self.count, max(self.lengths)
            for mine, theirs in zip(grown.keys + grown.values, cache.keys + cache.values,
                                    strict=True):
                mine[:kept, :, :length] = theirs[:kept, :, :length]
        self.cache = grown

    def _free_if_idle(self) -> None:
        if not self.lengths and not self.filling:
            self.cache = None


def padded_parents(parents: list[int], width: int) -> list[int]:
    """A tree's parents padded to `width` nodes; the padding nodes are roots (their outputs
    are dropped; each attends to the context and itself only, so no real node sees them)."""
    if len(parents) > width:
        raise ValueError(f"{len(parents)} parents for {width} tree nodes")
    return [*parents, *[-1] * (width - len(parents))]


def make_rows(model: LanguageModel, max_rows: int, max_bytes: int | None = None) -> Rows:
    """Rows for `model`: the static runner batches; any other runner runs one row.
    max_bytes: the KV cache's memory budget (None: unbounded)."""
    if isinstance(model, StaticCausalLM):
        return StaticRows(model, max_rows, max_bytes)
    if max_rows == 1:
        return SingleRow(model, max_bytes)
    raise ValueError(f"batching needs the static runner (llama-family decoders); {model.name} "
                     "runs on another runner: use a batch size of 1")
