"""Prompt lookup: propose what followed the most recent earlier occurrence of the context's suffix.

Deterministic (q one-hot at the proposal), so it is verified with the exact one-hot rule and
stays lossless under sampling. The index over the context is built incrementally: each step
only the new tokens are hashed, so a step costs O(new tokens * (max_n - min_n + 1)), not O(T).
The index keeps the `keep` most recent occurrences of each n-gram (1 for this line drafter;
the tree drafter, ngram_tree.py, proposes the continuations of several).
"""

from __future__ import annotations

import torch

from specdec.drafters.base import Drafter, Proposal
from specdec.errors import UsageError
from specdec.sampling import SamplingParams, TokenHistory

MAX_NGRAM = 64  # bound on user-given n-gram sizes (keys are tuples of this length)
MAX_KEEP = 64  # bound on occurrences kept per n-gram (memory and per-step cost grow with it)


class NgramDrafter(Drafter):
    """Suffix n-gram lookup in prompt + generated text, longest match first, most recent wins."""

    def __init__(self, min_n: int = 1, max_n: int = 4, keep: int = 1):
        for label, value in (("min_n", min_n), ("max_n", max_n)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NGRAM:
                raise UsageError(f"ngram {label} must be an integer in [1, {MAX_NGRAM}], "
                                 f"got {value!r}")
        if min_n > max_n:
            raise UsageError(f"ngram min_n ({min_n}) must be <= max_n ({max_n})")
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_KEEP:
            raise UsageError(f"ngram keep must be an integer in [1, {MAX_KEEP}], got {keep!r}")
        self.min_n, self.max_n, self.keep = min_n, max_n, keep
        self.name = f"ngram:{min_n}:{max_n}"
        self.tokens: list[int] = []
        self.last_match = 0  # suffix length of the last lookup's match
        # index[n][n-gram] = positions right after its `keep` most recent occurrences that have
        # a successor, oldest first
        self.index: dict[int, dict[tuple[int, ...], list[int]]] = {}
        self.begin(torch.zeros(1, 0, dtype=torch.long))

    def fork(self) -> NgramDrafter:
        """A drafter for another concurrent sequence (its own index)."""
        return NgramDrafter(self.min_n, self.max_n)

    def begin(self, prompt_ids: torch.Tensor) -> None:
        self.tokens = []
        self.index = {n: {} for n in range(self.min_n, self.max_n + 1)}
        if prompt_ids.shape[1]:
            self._sync(prompt_ids)

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None) -> Proposal:
        # deterministic drafts (q one-hot) are verified exactly whatever the penalties: the
        # history is not needed
        if context.shape[0] != 1:
            raise NotImplementedError("the n-gram drafter supports batch 1 only")
        if gamma <= 0:
            return Proposal.empty(1)
        self._sync(context)
        start = self.lookup()
        if start is None:
            return Proposal.empty(1)
        return Proposal(torch.tensor([self.continuation(start, gamma)], dtype=torch.long))

    def lookup(self) -> int | None:
        """Start of the continuation of the longest matching suffix, or None.

        Sets last_match to that suffix's length (0 when nothing matched).
        """
        found = self.matches(1)
        return found[0][0] if found else None

    def matches(self, limit: int) -> list[tuple[int, int]]:
        """(start, n) of up to `limit` earlier occurrences of the context's suffixes: the
        longest matching n-gram's, most recent first, then shorter n-grams' not yet listed.
        The first is lookup()'s (sets last_match likewise)."""
        tokens = self.tokens
        found: list[tuple[int, int]] = []
        seen: set[int] = set()
        for n in range(min(self.max_n, len(tokens) - 1), self.min_n - 1, -1):
            if len(found) == limit:
                break
            for start in reversed(self.index[n].get(tuple(tokens[-n:]), ())):
                if start not in seen and len(found) < limit:  # a longer match ends here too
                    seen.add(start)
                    found.append((start, n))
        self.last_match = found[0][1] if found else 0
        return found

    def continuation(self, start: int, gamma: int) -> list[int]:
        """gamma tokens from `start`; past the end, the match repeats with its period."""
        tokens, end = self.tokens, len(self.tokens)
        out: list[int] = []
        for j in range(gamma):
            i = start + j
            out.append(tokens[i] if i < end else out[i - end])
        return out

    def _sync(self, context: torch.Tensor) -> None:
        """Index the tokens that context adds; rebuild if it is not an extension."""
        known = len(self.tokens)
        length = context.shape[1]
        # the decoder only ever appends, so checking the last known token is enough; a wrong
        # guess here costs acceptance, never correctness
        if length < known or (known and int(context[0, known - 1]) != self.tokens[-1]):
            self.tokens, known = [], 0
            self.index = {n: {} for n in self.index}
        self.tokens.extend(context[0, known:].tolist())
        self._index_from(known)

    def _index_from(self, known: int) -> None:
        """Add n-grams ending at positions known..len-1 (each has a successor token)."""
        tokens, keep = self.tokens, self.keep
        for end in range(max(known, 1), len(tokens)):
            for n, table in self.index.items():
                if end >= n:
                    key = tuple(tokens[end - n:end])
                    starts = table.get(key)
                    if starts is None:
                        table[key] = [end]
                    elif keep == 1:
                        starts[0] = end
                    else:
                        starts.append(end)
                        if len(starts) > keep:
                            del starts[0]
