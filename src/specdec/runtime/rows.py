"""Batch rows: several sequences in one target forward, each at its own length.

How ragged lengths live in the cache (runtime/kv_cache.py, which keeps the tensors and each
row's length): one static buffer [rows, kv_heads, capacity, head_dim] per layer, each row
written at its OWN positions (row i's token t at slot t). A row's cache is therefore always
contiguous from slot 0; rows differ only in how far they reach. A step feeds every row a
block of the same width (shorter blocks padded); row i's tokens sit at positions
length_i .. length_i + w - 1, and the causal mask (key j visible to the query at position t
iff j <= t) hides both the other rows' longer reach and a row's own padding. Rollback per
row moves that row's length; the padded slots past it are overwritten later. Active rows are
kept at indices 0..n-1: a leaving row is replaced by the last one (its positions copied
once), so a step runs on a view of the first n rows and never gathers.
The price is attention over the longest row's length for every row (measured in
benchmarks/batch.py against per-row forwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from specdec.language_model import LanguageModel
from specdec.runtime.hf import HFModel
from specdec.runtime.kv_cache import (
    PREFILL_CHUNK,
    KVCache,
    StaticKVCache,
    prefill_chunks,
    rounded_capacity,
)
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
        self.kv = KVCache(model.new_cache)  # the cache and each row's length
        self.reserved: list[int] = []  # positions each row may reach
        self.filling: list[Joining] = []  # prefills in pieces, not yet rows
        self.bytes_per_position = model.kv_bytes_per_position

    @property
    def count(self) -> int:
        return self.kv.count

    @property
    def lengths(self) -> list[int]:
        """Cached positions per row."""
        return self.kv.lengths

    @property
    def cache(self) -> StaticKVCache | None:
        return self.kv.tensors

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
        ids = torch.zeros(count, longest, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, : lengths[i]] = prompt[0, : lengths[i]]
        # the same bound on a chunk's activations and scores as one row's prefill
        chunk = max(1, PREFILL_CHUNK // max(count, 1))
        self.kv.add_rows(self.model.forward_rows, ids.to(self.device), lengths, chunk)
        self.reserved.extend(reach)
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
        prefill_chunks(self.model.forward_rows, ids, joining.cache, begin, stop)
        joining.done = stop
        return stop - begin

    @torch.inference_mode()
    def join(self, joining: Joining) -> torch.Tensor:
        if not joining.finished:
            self.prefill(joining, None)
        self._ensure_shape(self.count + 1, max([*self.reserved, joining.positions]))
        assert joining.cache is not None
        self.kv.add_copied(joining.cache, [joining.length])
        self.reserved.append(joining.positions)
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
        lengths = self.lengths
        end = max(lengths) + width
        self._ensure_shape(rows, end)
        assert self.cache is not None
        starts = torch.tensor(lengths, device=self.device)
        positions = starts[:, None] + torch.arange(width, device=self.device)
        logits = self.model.forward_rows(tokens.to(self.device), positions, end,
                                         self.cache.view(0, rows), keep=width)
        assert logits is not None
        self.kv.advance(width)
        return logits.float()

    verifies_trees = True

    @torch.inference_mode()
    def extend_tree(self, tokens: torch.Tensor, parents: list[list[int]]) -> torch.Tensor:
        rows, width = tokens.shape
        if rows != self.count or len(parents) != rows:
            raise ValueError(f"extend_tree needs one tree per row: {rows} blocks, "
                             f"{len(parents)} trees, {self.count} rows")
        lengths = self.lengths
        end = max(lengths) + width
        self._ensure_shape(rows, end)
        assert self.cache is not None
        layouts = [tree_layout(padded_parents(p, width), start, self.device)
                   for p, start in zip(parents, lengths, strict=True)]
        logits = self.model.forward_tree(tokens.to(self.device), layouts, end,
                                         self.cache.view(0, rows))
        self.kv.advance(width, tree=True)
        return logits.float()

    @torch.inference_mode()
    def accept_paths(self, paths: list[list[int]]) -> None:
        self.kv.accept_paths(paths)

    def rollback(self, counts: list[int]) -> None:
        self.kv.rollback(counts)

    @torch.inference_mode()
    def remove(self, index: int) -> None:
        self.kv.remove(index)  # raises IndexError before anything changes
        self.reserved[index] = self.reserved[-1]
        self.reserved.pop()
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
        if self.kv.covers(rows, positions):
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
        self.kv.resize(rows, positions)

    def _free_if_idle(self) -> None:
        if not self.kv.count and not self.filling:
            self.kv.free()


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
