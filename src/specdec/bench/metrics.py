"""Per method x temperature x category measures from the run's records.

Costs are per decode step, without the prompt's prefill (timed apart): t1 is plain decoding's
time per target call, c = drafter time per drafted token / t1 and v = our verify call's time
/ t1, so the prediction is theory.speedup(alpha, gamma, c, v) = E / (gamma*c + v).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from specdec import theory
from specdec.bench.methods import PLAIN, Method
from specdec.bench.runner import Record

OVERALL = "overall"
TRANSFORMERS_PLAIN = "transformers plain"


@dataclass
class Summary:
    method: str
    family: str
    drafter: str | None
    gamma: int | str | None
    temperature: float
    category: str
    prompts: int
    tokens: int
    seconds: float
    tokens_per_s: float
    speedup: float | None  # tokens/s over plain decoding (ours), prefill included
    speedup_vs_transformers: float | None  # over transformers' plain generate
    errors: int = 0
    drafter_failures: int | None = None  # steps decoded without drafts (drafter raised)
    # specdec methods only (None elsewhere)
    decode_speedup: float | None = None  # prefill excluded on both sides
    tokens_per_call: float | None = None
    acceptance_rate: float | None = None  # accepted / drafted
    alpha: float | None = None  # mean sum_x min(p, q)
    mean_gamma: float | None = None  # drafts per target call actually proposed
    c: float | None = None
    v: float | None = None
    predicted_speedup: float | None = None
    efficiency: float | None = None  # decode_speedup / predicted_speedup
    profile: dict[str, float] | None = None  # share of time: prefill, drafter, target, overhead
    acceptance_by_position: list[float] = field(default_factory=list)
    # temperature 0 only: outputs that differ from plain greedy, and where they first differ
    greedy_differ: int | None = None
    first_differences: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: _finite(v) for k, v in asdict(self).items()}


def summarize(records: list[Record], methods: list[Method]) -> list[Summary]:
    """One Summary per (method, temperature, category), plus category 'overall'."""
    info = {m.name: m for m in methods}
    groups: dict[tuple[str, float, str], list[Record]] = defaultdict(list)
    for record in records:
        for category in (record.category, OVERALL):
            groups[(record.method, record.temperature, category)].append(record)
    baseline = {(r.question_id, r.temperature, r.repeat): r for r in records
                if r.method == PLAIN and not r.error}
    out = []
    for (name, temperature, category), group in groups.items():
        method = info[name]
        out.append(_summary(method, temperature, category, group, baseline, groups))
    order = {m.name: i for i, m in enumerate(methods)}
    return sorted(out, key=lambda s: (s.temperature, order[s.method], s.category != OVERALL,
                                      s.category))


def _summary(method: Method, temperature: float, category: str, group: list[Record],
             baseline: dict, groups: dict) -> Summary:
    ok = [r for r in group if not r.error]
    tokens, seconds = sum(r.n_tokens for r in ok), sum(r.seconds for r in ok)
    summary = Summary(method.name, method.family, method.drafter, method.gamma, temperature,
                      category, len(ok), tokens, seconds, _ratio(tokens, seconds), None, None,
                      errors=len(group) - len(ok))
    summary.speedup = _relative(summary, groups.get((PLAIN, temperature, category)))
    summary.speedup_vs_transformers = _relative(
        summary, groups.get((TRANSFORMERS_PLAIN, temperature, category)))
    base = [baseline.get((r.question_id, r.temperature, r.repeat)) for r in ok]
    if method.family == "specdec" and ok and all(b is not None and b.stats for b in base):
        _speculative(summary, ok, base)
    if temperature == 0 and ok and all(b is not None for b in base):
        firsts = [_first_difference(r.tokens, b.tokens) for r, b in zip(ok, base, strict=True)]
        summary.first_differences = [f for f in firsts if f is not None]
        summary.greedy_differ = len(summary.first_differences)
    return summary


def _speculative(summary: Summary, ok: list[Record], base: list[Record]) -> None:
    totals = _totals(ok)
    plain = _totals(base)
    t1 = _ratio(plain["target_s"] - plain["prefill_s"], plain["target_calls"])
    summary.decode_speedup = _ratio(
        _ratio(totals["generated"], totals["total_s"] - totals["prefill_s"]),
        _ratio(plain["generated"], plain["total_s"] - plain["prefill_s"]))
    summary.tokens_per_call = _ratio(totals["generated"], totals["target_calls"])
    summary.drafter_failures = int(totals["drafter_failures"])
    summary.profile = {name: _ratio(totals[key], totals["total_s"]) for name, key in (
        ("prefill", "prefill_s"), ("drafter", "drafter_s"), ("target", "decode_target_s"),
        ("overhead", "other_s"))}
    summary.acceptance_by_position = _by_position(ok)
    if totals["drafted"] == 0 or t1 <= 0:
        return
    summary.acceptance_rate = totals["accepted"] / totals["drafted"]
    summary.alpha = _ratio(totals["beta_sum"], totals["beta_count"])
    summary.mean_gamma = totals["drafted"] / totals["target_calls"]
    summary.c = _ratio(totals["drafter_s"] - totals["drafter_begin_s"], totals["drafted"]) / t1
    summary.v = _ratio(totals["decode_target_s"], totals["target_calls"]) / t1
    alpha = min(summary.alpha, 0.999)
    # S for the mean number of drafts actually proposed (n-gram drafters propose fewer)
    gamma = max(1, round(summary.mean_gamma))
    summary.predicted_speedup = theory.speedup(alpha, gamma, summary.c, summary.v)
    summary.efficiency = _ratio(summary.decode_speedup, summary.predicted_speedup)


def _totals(records: Iterable[Record]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for r in records:
        stats = r.stats or {}
        for key in ("generated", "target_calls", "drafted", "accepted", "beta_sum", "beta_count",
                    "drafter_s", "target_s", "total_s", "other_s", "drafter_failures"):
            totals[key] += stats.get(key, 0)
        totals["prefill_s"] += r.prefill_s
        totals["drafter_begin_s"] += r.drafter_begin_s
    totals["decode_target_s"] = totals["target_s"] - totals["prefill_s"]
    return totals


def _by_position(records: list[Record]) -> list[float]:
    drafted: list[float] = []
    accepted: list[float] = []
    for r in records:
        for i, (d, a) in enumerate(zip(r.stats["drafted_at"], r.stats["accepted_at"],
                                       strict=True)):
            if i >= len(drafted):
                drafted.append(0)
                accepted.append(0)
            drafted[i] += d
            accepted[i] += a
    return [_ratio(a, d) for a, d in zip(accepted, drafted, strict=True)]


def _relative(summary: Summary, reference: list[Record] | None) -> float | None:
    if not reference:
        return None
    ok = [r for r in reference if not r.error]
    rate = _ratio(sum(r.n_tokens for r in ok), sum(r.seconds for r in ok))
    return _ratio(summary.tokens_per_s, rate) if rate else None


def _first_difference(tokens: list[int], reference: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(tokens, reference, strict=False)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def repeat_spread(records: list[Record], method: str, temperature: float) -> list[float]:
    """Overall speedup of `method` over plain decoding in each repeat (the run-to-run spread)."""
    out = []
    for repeat in sorted({r.repeat for r in records}):
        def rate(name: str, repeat: int = repeat) -> float:
            rs = [r for r in records if r.method == name and r.temperature == temperature
                  and r.repeat == repeat and not r.error]
            return _ratio(sum(r.n_tokens for r in rs), sum(r.seconds for r in rs))
        plain = rate(PLAIN)
        if plain:
            out.append(rate(method) / plain)
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
