"""How many tokens to draft each step: a fixed gamma, or a policy that adapts per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class StepRecord:
    """What one decoding step cost and achieved; fed back to the gamma policy."""

    drafted: int  # k drafts proposed
    accepted: int  # n of them kept
    betas: list[float]  # sum_x min(p, q) at the positions whose prefix is in the output
    drafter_s: float  # time spent proposing
    drafter_forwards: int  # drafter model forwards (0 for model-free drafters)
    target_s: float  # time of the one target forward over k + 1 tokens (and its rollback)
    budget: int | None = None  # tree steps: the node budget the drafter was given


@runtime_checkable
class GammaPolicy(Protocol):
    """Chooses gamma before each step and learns from what the step did."""

    def choose(self) -> int: ...

    def observe(self, step: StepRecord) -> None: ...


@runtime_checkable
class TreePolicy(GammaPolicy, Protocol):
    """A policy for tree steps: choose() gives the node budget, depth_cap(budget) the
    deepest depth worth drafting at the budget a step actually gives (in a batch the batch
    policy sets it, and choose() is not called)."""

    def depth_cap(self, budget: int) -> int: ...


@dataclass
class FixedGamma:
    """Always draft the same number of tokens."""

    gamma: int

    def choose(self) -> int:
        return self.gamma

    def observe(self, step: StepRecord) -> None:
        pass
