"""When a policy that decodes plainly should try a short draft: after a run of plain steps
that doubles with each probe, since acceptance may have risen since speculation last lost."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProbeBackoff:
    """Plain steps between probes: `first` at the start and after any speculating step or
    promising probe, doubled after each probe up to `most` (probes that keep failing cost
    ever less)."""

    first: int
    most: int
    plain_steps: int = 0
    every: int = field(init=False)

    def __post_init__(self) -> None:
        self.every = self.first

    def probe(self, gamma: int) -> bool:
        """Whether this step, whose modelled gamma is `gamma`, should probe instead."""
        if gamma > 0:
            self.reset()
            return False
        self.plain_steps += 1
        if self.plain_steps <= self.every:
            return False
        self.plain_steps = 0
        self.every = min(2 * self.every, self.most)
        return True

    def reset(self) -> None:
        """Speculation paid (or a probe promised it would): stop backing off."""
        self.plain_steps, self.every = 0, self.first
