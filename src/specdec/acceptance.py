"""A request's acceptance rule, decided once (when its Sequence is made) and used by line
verification (verify_rows.py) and tree verification (verify_tree.py) alike.

  greedy   temperature 0: keep drafts while they equal the target's argmax;
  coupled  seed-keyed Gumbel-max noise (noise.py): keep drafts while they equal the target's
           Gumbel-max token; the text depends on the seed and the target only;
  sample   Algorithm 1 (Leviathan et al.), its uniforms and residual draws counter-based,
           keyed by a stream key drawn once from the request's generator;
  block    block verification (verify_block.py, Sun et al. 2025) for lines, with the sample
           rule's key (SamplingParams.block_verification); a tree row walks its tree by
           the sample rule (verify_tree.py), block verification being a rule for one line.
Every rule's randomness is a function of its key and absolute token positions, never of a
generator's state, so a seed means the same draws for lines and trees, on any device, at any
batch position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.noise import stream_key
from specdec.sampling import SamplingParams

RULES = ("greedy", "coupled", "sample", "block")


@dataclass(frozen=True)
class AcceptanceRule:
    """name: one of RULES; key: the coupled rule's seed, the sampled rule's
    stream key, 0 for greedy (which draws nothing)."""

    name: str
    key: int = 0

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"unknown rule {self.name!r} (known: {', '.join(RULES)})")

    @classmethod
    def of(cls, params: SamplingParams, generator: torch.Generator) -> AcceptanceRule:
        """The rule `params` ask for (params.coupled_rule decides coupled against sampled;
        noise.resolve_seed gave a coupled request its seed)."""
        if params.greedy:
            return cls("greedy")
        if params.coupled_rule:
            assert params.seed is not None, "resolve_seed(params) first"
            return cls("coupled", params.seed)
        return cls("block" if params.block_verification else "sample", stream_key(generator))

    def counts_betas(self, has_q: bool) -> bool:
        """Whether a line step's betas are counted from what happened (1 per kept draft)
        rather than sum min(p, q): one-hot p and q (greedy) say nothing more, and a coupled
        draft drawn from a q is kept with a chance that is not p's overlap with q."""
        return self.name == "greedy" or (self.name == "coupled" and has_q)
