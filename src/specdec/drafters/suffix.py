"""Suffix-tree drafting (`--draft suffix`): trees of the continuations most often seen after
the longest matching suffix of the context (SuffixDecoding, Oliaro et al. 2024; Arctic
Inference's `suffix` speculator in vLLM).

The index covers this request's prompt and output (models/suffix_index.py); `suffix:global`
adds one per-process index of earlier requests' outputs, bounded in bytes, and each step
takes whichever index's tree scores higher (expected accepted tokens under the counts), as
Arctic does. Tree size from match statistics (Arctic's rule): at most factor x the matched
suffix's length nodes, none whose empirical path probability is below min_prob. Candidates
are deterministic (q one-hot), so verification is exact under every sampling rule.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from dataclasses import dataclass, replace

import torch

from specdec.drafters.base import Drafter, Proposal
from specdec.drafters.suffix_index import NODE_BYTES, Continuations, SuffixIndex
from specdec.drafters.tree import DraftTree
from specdec.errors import UsageError
from specdec.sampling import SamplingParams, TokenHistory

GLOBAL_BYTES = 256 * 1024 * 1024  # default bound of suffix:global's index


@dataclass(frozen=True)
class SuffixConfig:
    max_nodes: int = 16  # nodes per tree at most (verification cost grows with them)
    factor: float = 1.0  # nodes <= factor x matched suffix length (Arctic's max_spec_factor)
    min_prob: float = 0.1  # drop continuations whose empirical path probability is lower
    pattern: int = 16  # longest context suffix matched
    depth: int = 16  # deepest continuation
    global_bytes: int = 0  # > 0: also earlier requests' outputs, their index bounded so

    @property
    def name(self) -> str:
        return "suffix:global" if self.global_bytes else "suffix"


def parse_suffix(arg: str) -> SuffixConfig:
    """'' | options joined by ':': global, global=MB, nodes=N, factor=F, prob=P."""
    config = SuffixConfig()
    for option in filter(None, (o.strip().lower() for o in arg.split(":"))):
        key, _, value = option.partition("=")
        try:
            if key == "global":
                megabytes = float(value) if value else GLOBAL_BYTES / 2**20
                if not 0 < megabytes <= 65536:
                    raise ValueError
                config = replace(config, global_bytes=int(megabytes * 2**20))
            elif key == "nodes" and value.isdigit() and 1 <= int(value) <= 64:
                config = replace(config, max_nodes=int(value))
            elif key == "factor" and 0 < float(value) <= 64:
                config = replace(config, factor=float(value))
            elif key == "prob" and 0 <= float(value) < 1:
                config = replace(config, min_prob=float(value))
            else:
                raise ValueError
        except ValueError:
            raise UsageError(f"suffix option {option!r}: known global[=MB], nodes=N (1..64), "
                             "factor=F, prob=P (0..1)") from None
    return config


class SharedOutputs:
    """Earlier requests' outputs in one index, bounded in bytes: past the bound the oldest
    outputs are dropped and the index rebuilt from the rest (down to half the bound)."""

    def __init__(self, depth: int, max_bytes: int):
        self.depth, self.max_bytes = depth, max_bytes
        self.index = SuffixIndex(depth)
        self.outputs: deque[list[int]] = deque()
        self.lock = threading.Lock()

    def add(self, tokens: list[int]) -> None:
        if not tokens:
            return
        with self.lock:
            self.outputs.append(tokens)
            self.index.start()
            self.index.extend(tokens)
            if self.index.bytes > self.max_bytes:
                self._rebuild()

    def _rebuild(self) -> None:
        # at most one node per token and depth: drop outputs until that bound fits half
        kept = sum(len(t) for t in self.outputs) * self.depth * NODE_BYTES
        while self.outputs and kept > self.max_bytes // 2:
            kept -= len(self.outputs.popleft()) * self.depth * NODE_BYTES
        self.index = SuffixIndex(self.depth)
        for tokens in self.outputs:
            self.index.start()
            self.index.extend(tokens)


_NO_LOCK = contextlib.nullcontext()
_SHARED: dict[tuple[int, int], SharedOutputs] = {}
_SHARED_LOCK = threading.Lock()


def shared_outputs(depth: int, max_bytes: int) -> SharedOutputs:
    """The process's index of earlier outputs for this depth and bound."""
    with _SHARED_LOCK:
        return _SHARED.setdefault((depth, max_bytes), SharedOutputs(depth, max_bytes))


class SuffixDrafter(Drafter):
    """TreeDrafter over a suffix index of the prompt and output (and earlier outputs)."""

    def __init__(self, config: SuffixConfig | None = None):
        self.config = config or SuffixConfig()
        self.name = self.config.name
        self.shared = shared_outputs(self.config.pattern + self.config.depth,
                                     self.config.global_bytes) \
            if self.config.global_bytes else None
        self.tokens: list[int] = []
        self.prompt_length = 0
        self.index = SuffixIndex(self.config.pattern + self.config.depth)
        self.last_match = 0  # length of the last matched suffix

    def fork(self) -> SuffixDrafter:
        """A drafter for another concurrent sequence (its own index, the shared one shared)."""
        return SuffixDrafter(self.config)

    def begin(self, prompt_ids: torch.Tensor) -> None:
        if self.shared is not None:  # the previous request's output joins the shared index
            self.shared.add(self.tokens[self.prompt_length:])
        self.tokens, self.prompt_length = [], prompt_ids.shape[1]
        self.index = SuffixIndex(self.index.depth)
        self._sync(prompt_ids)

    def propose(self, context: torch.Tensor, gamma: int, params: SamplingParams,
                generator: torch.Generator, history: TokenHistory | None = None) -> Proposal:
        """The most likely line (deterministic: q one-hot, exact under any penalties)."""
        if gamma <= 0:
            return Proposal.empty(1)
        found = self._best(context, gamma, gamma, fan=1)
        return Proposal(torch.tensor([found.tokens], dtype=torch.long).view(1, -1))

    def propose_tree(self, context: torch.Tensor, nodes: int, depth: int,
                     params: SamplingParams, generator: torch.Generator,
                     history: TokenHistory | None = None) -> DraftTree:
        if nodes <= 0 or depth <= 0:
            return DraftTree.empty()
        found = self._best(context, nodes, depth, fan=None)
        return DraftTree(torch.tensor([found.tokens], dtype=torch.long).view(1, -1),
                         found.parents, score=found.score)

    def _best(self, context: torch.Tensor, nodes: int, depth: int,
              fan: int | None) -> Continuations:
        """The higher-scoring tree of the request's index and the shared one."""
        if context.shape[0] != 1:
            raise NotImplementedError("the suffix drafter supports batch 1 only")
        self._sync(context)
        config = self.config
        depth = min(depth, config.depth)
        best = Continuations()
        self.last_match = 0
        sources = [self.index] if self.shared is None else [self.index, self.shared.index]
        for index in sources:
            shared = self.shared is not None and index is not self.index
            with self.shared.lock if shared else _NO_LOCK:  # type: ignore[union-attr]
                node, length = index.match(self.tokens, config.pattern)
                if not length:
                    continue
                budget = nodes if fan == 1 else \
                    min(nodes, config.max_nodes, max(1, math.ceil(config.factor * length)))
                found = index.expand(node, budget, depth, config.min_prob, fan)
            if found.score > best.score:
                best, self.last_match = found, length
        return best

    def _sync(self, context: torch.Tensor) -> None:
        """Index the tokens that context adds; rebuild if it is not an extension."""
        known, length = len(self.tokens), context.shape[1]
        # the decoder only appends, so checking the last known token is enough; a wrong
        # guess costs acceptance, never correctness
        if length < known or (known and int(context[0, known - 1]) != self.tokens[-1]):
            self.tokens, known = [], 0
            self.index = SuffixIndex(self.index.depth)
        new = context[0, known:].tolist()
        self.tokens.extend(new)
        self.index.extend(new)
