"""The one table of sampling parameters' bounds: SamplingParams checks against it and the
server's request schema derives its pydantic constraints from it, so the two cannot disagree.

Every bound keeps the adjusted logits finite (float32) or matches the OpenAI API's own limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

MAX_LOGPROBS = 20  # as the OpenAI API
GREEDY_BELOW = 1e-5  # temperatures below this are greedy (vLLM's threshold)
MAX_LOGIT_BIAS = 1024  # entries
MAX_DRAFT_TOKENS = 64  # per step, as --gamma's bound (drafters.factory.MAX_GAMMA)


@dataclass(frozen=True)
class Bound:
    """An interval: low and high (None = unbounded), each included unless marked open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        """The interval as a message shows it: "[0, 1)", ">= 1"."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"{'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}")

    def pydantic(self) -> dict[str, float]:
        """The bound as pydantic Field keywords (ge/gt, le/lt)."""
        out: dict[str, float] = {}
        if self.low is not None:
            out["gt" if self.low_open else "ge"] = self.low
        if self.high is not None:
            out["lt" if self.high_open else "le"] = self.high
        return out


def _number(value: float | None) -> str:
    if isinstance(value, int) and abs(value) >= 1 << 32:  # seeds: say 2**64, not 20 digits
        sign = "-" if value < 0 else ""
        return f"{sign}2**{abs(value).bit_length() - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


# SamplingParams field -> its values' bound (logit_bias: each bias value)
BOUNDS: MappingProxyType[str, Bound] = MappingProxyType({
    "temperature": Bound(0),
    "top_k": Bound(0),
    "top_p": Bound(0, 1, low_open=True),
    "min_p": Bound(0, 1, high_open=True),
    "seed": Bound(-(1 << 63), 1 << 64, high_open=True),
    "max_new_tokens": Bound(1),
    "repetition_penalty": Bound(0.01, 100.0),  # logits scaled at most 100x: finite in float32
    "frequency_penalty": Bound(-2, 2),
    "presence_penalty": Bound(-2, 2),
    "logit_bias": Bound(-100, 100),
    "logprobs": Bound(0, MAX_LOGPROBS),
    "max_draft_tokens": Bound(0, MAX_DRAFT_TOKENS),
})
