"""The drafter protocol: propose up to gamma tokens, with their q distributions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from specdec.sampling import SamplingParams, TokenHistory

if TYPE_CHECKING:  # specdec.grammar imports llguidance: only requests with a constraint do
    from specdec.grammar import DraftGuide


@dataclass
class Proposal:
    """Draft tokens x_1..x_k [B, k] and q_1..q_k [B, k, V].

    probs None means a deterministic drafter: q_i is one-hot at x_i, and verification uses
    the exact one-hot rule (accept w.p. p(x), residual = p without x).
    """

    tokens: torch.Tensor
    probs: torch.Tensor | None = None
    forwards: int = 0  # drafter model forwards spent on this proposal

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    @staticmethod
    def empty(rows: int = 1) -> Proposal:
        return Proposal(torch.zeros(rows, 0, dtype=torch.long))


@runtime_checkable
class Drafter(Protocol):
    """Subclass it to inherit the defaults of fork() and warmup()."""

    name: str

    def begin(self, prompt_ids: torch.Tensor) -> None:
        """Start a new generation for prompt_ids [B, T]."""
        ...

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None) -> Proposal:
        """Up to gamma tokens continuing context [B, T] (the target's decoder context).

        Drafts must be sampled from the returned probs, which must be the drafter's
        distribution adjusted with `params` (sampling.adjusted_probs). history is passed only
        when params has penalties: the i-th draft's logits then go through
        sampling.penalize with history.plus(drafts before it), as the target's do.
        """
        ...

    def fork(self) -> Drafter:
        """A drafter for another concurrent sequence (batching): shared weights and tables, its
        own per-sequence state. ValueError when it cannot (the default)."""
        raise ValueError(f"drafter {self.name!r} cannot draft for several sequences at once; "
                         "use a batch size of 1")

    def batched(self, max_rows: int) -> RowDrafter | None:
        """A drafter for up to max_rows concurrent sequences at once (one forward per draft
        position for all of them), or None when sequences draft one by one with forks (the
        default)."""
        return None

    def warmup(self, capacity: int) -> float:
        """Compile whatever a first request would (servers call this before accepting one),
        for caches of `capacity` positions; returns the seconds spent. Default: nothing."""
        return 0.0


@dataclass
class DraftRequest:
    """One row's part of a batched draft: Drafter.propose's arguments."""

    context: torch.Tensor  # [1, T], the target's decoder context
    gamma: int
    params: SamplingParams
    generator: torch.Generator
    history: TokenHistory | None = None
    guide: DraftGuide | None = None  # a constrained request's grammar (GuidedDrafter)


@runtime_checkable
class GuidedDrafter(Drafter, Protocol):
    """A drafter that masks its q with a constrained request's grammar (DraftRequest.guide:
    drafters/sample.py's loop applies it), so it proposes only allowed tokens. Other
    drafters stay exact under a constraint: their refused drafts are simply rejected."""

    def propose_guided(self, request: DraftRequest) -> Proposal:
        """`propose` for the request, its q masked by request.guide."""
        ...


@runtime_checkable
class RowDrafter(Protocol):
    """Drafts for several sequences together; row i is the i-th added and not removed, as
    in the target's rows (runtime.rows.Rows)."""

    name: str

    @property
    def count(self) -> int:
        """Active rows."""
        ...

    def add(self, prompt_ids: torch.Tensor, reserve: int = 0) -> None:
        """Start row `count` for prompt_ids [1, T] (reserve: positions it may reach past it)."""
        ...

    def remove(self, index: int) -> None:
        """Drop row `index`; the last row takes its index."""
        ...

    def propose(self, requests: list[DraftRequest]) -> list[Proposal | Exception]:
        """Each row's proposal (one request per row, in row order), or the error of that
        row's own drafting; an error of the shared forward raises."""
        ...
