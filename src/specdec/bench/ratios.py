"""A ratio table for benchmark scripts: pooled tok/s of each method against a reference (and
optionally an anchor such as llama.cpp plain), per temperature, from runner Records."""

from __future__ import annotations

import statistics

from specdec.bench.runner import Record


def pooled_rate(records: list[Record]) -> float:
    """Total tokens over total seconds."""
    seconds = sum(r.seconds for r in records)
    return sum(r.n_tokens for r in records) / seconds if seconds else 0.0


def ratio_table(records: list[Record], names: list[str], temperatures: tuple[float, ...],
                reference: str, anchor: str | None = None) -> list[str]:
    """Markdown rows: tok/s, pooled ratio to `reference` (and `anchor`), the median
    per-question ratio to `reference`, tokens per target call and acceptance."""
    header = ["T", "method", "tok/s", f"vs {reference} (pooled)"] + \
        ([f"vs {anchor} (pooled)"] if anchor else []) + \
        [f"median per question vs {reference}", "tokens/call", "acceptance"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for temperature in temperatures:
        def pick(name: str, t: float = temperature) -> list[Record]:
            return [r for r in records if r.method == name and r.temperature == t
                    and not r.error and r.seconds > 0]

        per_question = {r.question_id: r.n_tokens / r.seconds for r in pick(reference)}
        base = pooled_rate(pick(reference))
        anchored = pooled_rate(pick(anchor)) if anchor else 0.0
        for name in names:
            rs = pick(name)
            rate = pooled_rate(rs)
            ratios = [r.n_tokens / r.seconds / per_question[r.question_id] for r in rs
                      if r.question_id in per_question]
            stats = [r.stats or {} for r in rs]
            calls, drafted, accepted, generated = (
                sum(s.get(key, 0) for s in stats)
                for key in ("target_calls", "drafted", "accepted", "generated"))
            cells = [f"{temperature:g}", name, f"{rate:.2f}", f"{_ratio(rate, base)}x"]
            if anchor:
                cells.append(f"{_ratio(rate, anchored)}x")
            cells += [f"{statistics.median(ratios) if ratios else 0:.2f}x",
                      f"{generated / calls:.2f}" if calls else "-",
                      f"{accepted / drafted:.3f}" if drafted else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"
