"""The project's speed goals, checked against the run: one markdown line each, judged only when
it can be.

A goal is judged from at least MIN_QUESTIONS questions in every category of the run, and from
the spread across questions: the per-question speedups (same question, same repeat, methods
interleaved) give a 95% t-interval of the geometric mean; MET needs the whole interval at or
above the goal, MISSED the whole interval below it, anything else is UNDECIDED (noise).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from specdec.bench.methods import PLAIN
from specdec.bench.metrics import OVERALL, Summary

MIN_QUESTIONS = 3  # per category
# two-sided 95% t quantiles by degrees of freedom; between keys the smaller df (wider) is used
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000,
        120: 1.980}


def _best(summaries: list[Summary], temperature: float, family: str, category: str = OVERALL,
          speculative: bool = True) -> Summary | None:
    pool = [s for s in summaries if s.temperature == temperature and s.family == family
            and s.category == category and (s.drafter is not None or not speculative)]
    return max(pool, key=lambda s: s.tokens_per_s, default=None)


def _rates(records: list[dict[str, Any]], method: str, temperature: float
           ) -> dict[tuple[str, int], tuple[str, float]]:
    """(question, repeat) -> (category, tokens/s) of one method's successful generations."""
    return {(r["question_id"], r["repeat"]): (r["category"], len(r["tokens"]) / r["seconds"])
            for r in records if r["method"] == method and r["temperature"] == temperature
            and not r.get("error") and r["seconds"] > 0 and r["tokens"]}


def interval(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of ratios and its 95% t-interval (needs >= 2 ratios, all > 0)."""
    logs = [math.log(x) for x in ratios]
    n = len(logs)
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    t = T975[max(k for k in T975 if k <= n - 1)]
    half = t * sd / math.sqrt(n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def judge(records: list[dict[str, Any]], method: str, reference: str, temperature: float,
          goal: float) -> str:
    """MET / MISSED / UNDECIDED / NOT JUDGED for `method` over `reference` >= goal."""
    ours, theirs = _rates(records, method, temperature), _rates(records, reference, temperature)
    pairs = sorted(set(ours) & set(theirs))
    too_few = _too_few(records, temperature,
                       [(ours[p][0], p[0]) for p in pairs])
    if too_few:
        return too_few
    mean, low, high = interval([ours[p][1] / theirs[p][1] for p in pairs])
    spread = (f"per-question geometric mean {mean:.2f}x, 95% interval {low:.2f}-{high:.2f}x "
              f"over {len(pairs)} generations")
    if low >= goal:
        return f"{spread}: **MET**"
    if high < goal:
        return f"{spread}: **MISSED**"
    return f"{spread}: **UNDECIDED** (the interval contains the goal: noise)"


def _too_few(records: list[dict[str, Any]], temperature: float,
             questions: list[tuple[str, str]]) -> str | None:
    """NOT JUDGED when some category of the run has fewer than MIN_QUESTIONS questions."""
    per_category: dict[str, set[str]] = defaultdict(set)
    for category, question in questions:
        per_category[category].add(question)
    categories = {r["category"] for r in records if r["temperature"] == temperature}
    counts = sorted((len(per_category.get(c, ())), c) for c in categories) or [(0, "the run")]
    count, category = counts[0]
    if count >= MIN_QUESTIONS:
        return None
    return (f"**NOT JUDGED** ({count} question{'s' * (count != 1)} in {category}; goals are "
            f"judged from >= {MIN_QUESTIONS} per category)")


def goal_lines(summaries: list[Summary], records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for temperature, goal in ((0.0, 2.0), (1.0, 1.5)):
        best = _best(summaries, temperature, "specdec")
        if best is None or best.speedup is None:
            continue
        lines.append(f"- Overall speedup over plain decoding at temperature {temperature:g} "
                     f">= {goal}x: best `{best.method}` {best.speedup:.2f}x pooled; "
                     + judge(records, best.method, PLAIN, temperature, goal))
        theirs = _best(summaries, temperature, "transformers", speculative=False)
        if theirs is not None and theirs.tokens_per_s:
            ratio = best.tokens_per_s / theirs.tokens_per_s
            lines.append(f"- >= 1.3x over transformers' best (`{theirs.method}`, "
                         f"{theirs.tokens_per_s:.1f} tok/s) at temperature {temperature:g}: "
                         f"{ratio:.2f}x pooled; "
                         + judge(records, best.method, theirs.method, temperature, 1.3))
        if best.efficiency is not None:
            rates = _rates(records, best.method, temperature)
            too_few = _too_few(records, temperature,
                               [(category, q) for (q, _), (category, _) in rates.items()])
            mark = too_few or ("**MET**" if best.efficiency >= 0.9 else "**MISSED**")
            lines.append(f"- measured / predicted >= 0.9 (`{best.method}`, temperature "
                         f"{temperature:g}): {best.efficiency:.2f}: {mark}")
        lines += _against_llamacpp(summaries, temperature)
    return lines or ["- (no speculative method in this run)"]


def _against_llamacpp(summaries: list[Summary], temperature: float) -> list[str]:
    categories = sorted({s.category for s in summaries if s.family == "llama.cpp"
                         and s.temperature == temperature})
    parts = []
    for category in categories:
        ours = _best(summaries, temperature, "specdec", category)
        theirs = _best(summaries, temperature, "llama.cpp", category, speculative=False)
        if ours and theirs and theirs.tokens_per_s:
            verdict = "ahead" if ours.tokens_per_s >= theirs.tokens_per_s else "behind"
            parts.append(f"{category} {ours.tokens_per_s:.1f} vs {theirs.tokens_per_s:.1f} "
                         f"({verdict}, {theirs.prompts} generations)")
    if not parts:
        return []
    return [f"- tokens/s, best specdec vs best llama.cpp at temperature {temperature:g} "
            "(pooled, not judged): " + "; ".join(parts)]
