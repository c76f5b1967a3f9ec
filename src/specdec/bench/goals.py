"""Issue 6's goals, checked against the summaries: one markdown line each, met or missed."""

from __future__ import annotations

from specdec.bench.metrics import OVERALL, Summary


def _best(summaries: list[Summary], temperature: float, family: str, category: str = OVERALL,
          speculative: bool = True) -> Summary | None:
    pool = [s for s in summaries if s.temperature == temperature and s.family == family
            and s.category == category and (s.drafter is not None or not speculative)]
    return max(pool, key=lambda s: s.tokens_per_s, default=None)


def _mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def goal_lines(summaries: list[Summary]) -> list[str]:
    lines = []
    for temperature, goal in ((0.0, 2.0), (1.0, 1.5)):
        best = _best(summaries, temperature, "specdec")
        if best is None or best.speedup is None:
            continue
        lines.append(f"- Overall speedup over plain decoding at temperature {temperature:g} "
                     f">= {goal}x: best `{best.method}` {best.speedup:.2f}x: "
                     f"**{_mark(best.speedup >= goal)}**")
        theirs = _best(summaries, temperature, "transformers", speculative=False)
        if theirs is not None and theirs.tokens_per_s:
            ratio = best.tokens_per_s / theirs.tokens_per_s
            lines.append(f"- >= 1.3x over transformers' best (`{theirs.method}`, "
                         f"{theirs.tokens_per_s:.1f} tok/s) at temperature {temperature:g}: "
                         f"{ratio:.2f}x: **{_mark(ratio >= 1.3)}**")
        if best.efficiency is not None:
            lines.append(f"- measured / predicted >= 0.9 (`{best.method}`, temperature "
                         f"{temperature:g}): {best.efficiency:.2f}: "
                         f"**{_mark(best.efficiency >= 0.9)}**")
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
            verdict = "win" if ours.tokens_per_s >= theirs.tokens_per_s else "LOSE"
            parts.append(f"{category} {ours.tokens_per_s:.1f} vs {theirs.tokens_per_s:.1f} "
                         f"({verdict})")
    if not parts:
        return []
    return [f"- tokens/s, best specdec vs best llama.cpp at temperature {temperature:g}: "
            + "; ".join(parts)]
