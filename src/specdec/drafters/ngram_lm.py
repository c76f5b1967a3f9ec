"""Unigram and bigram language models as drafters (the paper's section 4, Table 3).

Counted from a text corpus (tokenized with the target's tokenizer) or from token ids, e.g. the
target's own outputs. They return real q distributions, adjusted with the request's
SamplingParams exactly like the target's logits, and are verified with the full rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from specdec.drafters.base import Drafter, Proposal
from specdec.drafters.sample import sample_drafts
from specdec.errors import UsageError
from specdec.sampling import SamplingParams, TokenHistory

MAX_CORPUS_BYTES = 64 * 1024 * 1024  # bound what a user-given file may make us read
# the hot rows kept as float32 [V]: bounded in bytes, not rows (at Qwen's vocabulary of
# 151,936 a row is 0.6 MB, so 4,096 rows would be 2.5 GB)
ROW_CACHE_BYTES = 64 * 1024 * 1024


class NgramLMDrafter(Drafter):
    """order 1: q(x) from unigram counts; order 2: q(x | previous token), backed off to q(x).

    Both are add-`smoothing` estimates so q > 0 everywhere before the sampling filters; the
    bigram row is interpolated with the unigram with weight `bigram_weight`.
    """

    def __init__(self, unigram: torch.Tensor, bigrams: dict[int, dict[int, float]] | None,
                 order: int = 2, smoothing: float = 0.1, bigram_weight: float = 0.9):
        if order not in (1, 2):
            raise UsageError(f"order must be 1 (unigram) or 2 (bigram), got {order!r}")
        if not 0 <= bigram_weight <= 1:
            raise UsageError(f"bigram_weight must be in [0, 1], got {bigram_weight}")
        if smoothing <= 0:
            raise UsageError(f"smoothing must be > 0, got {smoothing}")
        self.order = order
        self.name = "unigram" if order == 1 else "bigram"
        self.vocab_size = int(unigram.shape[0])
        self.unigram = (unigram.double() + smoothing) / (unigram.double().sum() +
                                                          smoothing * self.vocab_size)
        self.bigrams = bigrams or {}
        self.bigram_weight = bigram_weight
        self._rows: dict[int, torch.Tensor] = {}  # log q(. | prev), cached per prev token
        self.max_cached_rows = max(1, ROW_CACHE_BYTES // (4 * self.vocab_size))

    # --- estimation -----------------------------------------------------------------------

    @classmethod
    def from_token_ids(cls, sequences: Iterable[list[int]], vocab_size: int, order: int = 2,
                       **kwargs: Any) -> NgramLMDrafter:
        """Count unigrams and bigrams over token id sequences (ids >= vocab_size are skipped)."""
        unigram = torch.zeros(vocab_size, dtype=torch.float64)
        bigrams: dict[int, dict[int, float]] = {}
        for seq in sequences:
            ids = [int(t) for t in seq if 0 <= int(t) < vocab_size]
            if ids:
                unigram += torch.bincount(torch.tensor(ids), minlength=vocab_size).double()
            if order == 2:
                for prev, nxt in zip(ids, ids[1:], strict=False):
                    row = bigrams.setdefault(prev, {})
                    row[nxt] = row.get(nxt, 0.0) + 1.0
        return cls(unigram, bigrams, order, **kwargs)

    @classmethod
    def from_text(cls, text: str, tokenizer: Any, vocab_size: int, order: int = 2,
                  **kwargs: Any) -> NgramLMDrafter:
        """Tokenize text line block by line block with the target's tokenizer, then count."""
        blocks = [b for b in text.split("\n\n") if b.strip()] or [text]
        ids = tokenizer(blocks, add_special_tokens=False).input_ids
        return cls.from_token_ids(ids, vocab_size, order, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path, tokenizer: Any, vocab_size: int, order: int = 2,
                  **kwargs: Any) -> NgramLMDrafter:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"corpus file not found: {path}")
        if path.stat().st_size > MAX_CORPUS_BYTES:
            raise UsageError(f"corpus file {path} is larger than {MAX_CORPUS_BYTES} bytes")
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise UsageError(f"corpus file {path} is empty")
        return cls.from_text(text, tokenizer, vocab_size, order, **kwargs)

    # --- the drafter ----------------------------------------------------------------------

    def begin(self, prompt_ids: torch.Tensor) -> None:
        pass  # stateless between steps: q depends only on the previous token

    def fork(self) -> NgramLMDrafter:
        """Itself: no per-sequence state, so concurrent sequences share it (and its rows)."""
        return self

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None) -> Proposal:
        if gamma <= 0:
            return Proposal.empty(context.shape[0])
        last = context[:, -1]

        def next_logits(choice: torch.Tensor | None) -> torch.Tensor:
            prev = last if choice is None else choice
            logq = torch.stack([self.log_probs(int(t)) for t in prev])  # [B, V], as logits
            return logq.to(generator.device)  # q lives where the generator draws

        tokens, probs = sample_drafts(next_logits, gamma, params, generator, history,
                                      context.shape[1])
        return Proposal(tokens, probs)

    def log_probs(self, prev: int) -> torch.Tensor:
        """log q(. | prev) as float32 [V]."""
        if self.order == 1 or prev not in self.bigrams:
            prev = -1
        row = self._rows.get(prev)
        if row is None:
            probs = self.unigram.clone()
            if prev >= 0:
                counts = self.bigrams[prev]
                ids = torch.tensor(list(counts), dtype=torch.long)
                values = torch.tensor(list(counts.values()), dtype=torch.float64)
                bigram = torch.zeros_like(probs).index_add_(0, ids, values / values.sum())
                probs = self.bigram_weight * bigram + (1 - self.bigram_weight) * probs
            row = probs.log().float()
            if len(self._rows) < self.max_cached_rows:  # bounded cache of the hot rows
                self._rows[prev] = row
        return row
