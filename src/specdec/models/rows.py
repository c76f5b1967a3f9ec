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

from typing import Protocol, runtime_checkable

import torch

from specdec.models.base import LanguageModel
from specdec.models.static import PREFILL_CHUNK, StaticCausalLM, StaticKVCache


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

    def remove(self, index: int) -> None:
        """Drop row `index`; the last row takes its index."""
        ...


class SingleRow:
    """One row over any LanguageModel's own cache (the batch-1 path, every architecture)."""

    max_rows = 1

    def __init__(self, model: LanguageModel):
        self.model = model
        self.device = model.device
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

    def remove(self, index: int) -> None:
        self._active = False


class StaticRows:
    """Up to max_rows sequences on one static cache of a StaticCausalLM's weights."""

    def __init__(self, model: StaticCausalLM, max_rows: int):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.model = model
        self.max_rows = max_rows
        self.device = model.device
        self.lengths: list[int] = []  # cached positions per row
        self.cache: StaticKVCache | None = None

    @property
    def count(self) -> int:
        return len(self.lengths)

    def add(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        return self.add_many([prompt_ids], reserve)[0]

    @torch.inference_mode()
    def add_many(self, prompts: list[torch.Tensor], reserve: int = 0) -> list[torch.Tensor]:
        """Prefill several prompts [1, T_i] as new rows in shared forwards (padded to the
        longest; a row's padding lies past its length and is overwritten later)."""
        if any(p.ndim != 2 or p.shape[0] != 1 for p in prompts):
            raise ValueError("each prompt must be [1, T]")
        first, count = self.count, len(prompts)
        if first + count > self.max_rows:
            raise RuntimeError(f"all {self.max_rows} rows are in use")
        lengths = [p.shape[1] - 1 for p in prompts]  # the last token stays pending
        longest = max(lengths, default=0)
        self._ensure_capacity(longest + 1 + max(reserve, 0))
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
        return prompts

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        rows, width = tokens.shape
        if rows != self.count:
            raise ValueError(f"extend needs one block per row: {rows} blocks, {self.count} rows")
        end = max(self.lengths) + width
        self._ensure_capacity(end)
        assert self.cache is not None
        starts = torch.tensor(self.lengths, device=self.device)
        positions = starts[:, None] + torch.arange(width, device=self.device)
        logits = self.model.forward_rows(tokens.to(self.device), positions, end,
                                         self.cache.view(0, rows), keep=width)
        assert logits is not None
        self.lengths = [n + width for n in self.lengths]
        return logits.float()

    def rollback(self, counts: list[int]) -> None:
        if len(counts) != self.count:
            raise ValueError(f"rollback needs a count per row: {len(counts)} for {self.count}")
        for i, n in enumerate(counts):
            if n < 0 or n > self.lengths[i]:
                raise ValueError(f"cannot roll back {n} of row {i}'s {self.lengths[i]} positions")
        self.lengths = [length - n for length, n in zip(self.lengths, counts, strict=True)]

    @torch.inference_mode()
    def remove(self, index: int) -> None:
        last = self.count - 1
        if not 0 <= index <= last:
            raise IndexError(f"no row {index} among {self.count}")
        if index != last:
            assert self.cache is not None
            self.cache.move_row(last, index, self.lengths[last])
            self.lengths[index] = self.lengths[last]
        self.lengths.pop()

    def _ensure_capacity(self, needed: int) -> None:
        cache = self.cache
        if cache is not None and cache.capacity >= needed:
            return
        if cache is not None:
            needed = max(needed, 2 * cache.capacity)  # doubling: few regrows
        grown = self.model.new_cache(self.max_rows, needed)
        if cache is not None:
            grown.copy_from(cache, max(self.lengths, default=0))
        self.cache = grown


def make_rows(model: LanguageModel, max_rows: int) -> Rows:
    """Rows for `model`: the static runner batches; any other runner runs one row."""
    if isinstance(model, StaticCausalLM):
        return StaticRows(model, max_rows)
    if max_rows == 1:
        return SingleRow(model)
    raise ValueError(f"batching needs the static runner (llama-family decoders); {model.name} "
                     "runs on another runner: use a batch size of 1")
