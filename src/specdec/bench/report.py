"""The run's outputs: results.json (validated against schema.json), report.md, plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from specdec.bench.goals import goal_lines
from specdec.bench.methods import PLAIN, Method
from specdec.bench.metrics import OVERALL, Summary, repeat_spread
from specdec.bench.runner import Record

SCHEMA = Path(__file__).with_name("schema.json")
SCHEMA_VERSION = 1


def results_json(meta: dict[str, Any], methods: list[Method], summaries: list[Summary],
                 records: list[Record]) -> dict[str, Any]:
    """The JSON document (see schema.json and docs/bench.md)."""
    spread = [{"method": m.name, "temperature": t, "speedups": repeat_spread(records, m.name, t)}
              for t in sorted({r.temperature for r in records}) for m in methods]
    return {
        "schema_version": SCHEMA_VERSION,
        **meta,
        "methods": [{"name": m.name, "family": m.family, "drafter": m.drafter,
                     "gamma": m.gamma, "notes": m.notes} for m in methods],
        "summaries": [s.to_dict() for s in summaries],
        "spread": spread,
        "records": [asdict(r) for r in records],
    }


def validate(document: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when document does not match schema.json."""
    import jsonschema

    jsonschema.validate(document, json.loads(SCHEMA.read_text()))


def write_outputs(out: Path, meta: dict[str, Any], methods: list[Method],
                  summaries: list[Summary], records: list[Record]) -> dict[str, Path]:
    from specdec.bench.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    document = results_json(meta, methods, summaries, records)
    validate(document)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    plots = write_plots(summaries, out)
    report_path = out / "report.md"
    report_path.write_text(markdown(document, summaries, [p.name for p in plots]))
    return {"json": json_path, "report": report_path,
            **{p.stem: p for p in plots}}


def markdown(document: dict[str, Any], summaries: list[Summary], plots: list[str]) -> str:
    lines = [f"# specdec bench: {document['config']['target']}", "",
             f"Command: `{document['command']}`", "",
             f"Sample: {document['sample']}. Wall time {document['seconds'] / 60:.1f} min.", ""]
    lines += [f"- {note}" for note in document["notes"]] + [""]
    temperatures = sorted({s.temperature for s in summaries})
    busy = document["environment"].get("load", {}).get("warning")
    roofline = document["environment"].get("roofline")
    if roofline:
        lines += ["## The target's step against this machine's limit", ""]
        lines += [f"- {line}" for line in document["environment"].get("packing", [])]
        lines += [f"- {line}" for line in roofline["lines"]] + [""]
    lines += ["## Goals", ""] + ([f"**{busy}**", ""] if busy else [])
    lines += goal_lines(summaries, document["records"]) + [""]
    for t in temperatures:
        lines += [f"## Leaderboard, temperature {t:g} (Spec-Bench shape: speedup over "
                  f"`{PLAIN}`)", ""] + leaderboard([s for s in summaries if s.temperature == t])
    lines += ["## Table 2 shape (paper): per task, specdec methods", ""] + table2(summaries)
    lines += ["## Theory against measurement (overall)", ""] + theory_table(summaries)
    lines += ["## Where the time goes (specdec methods, overall)", ""] + profile_table(summaries)
    lines += ["## Greedy outputs against plain greedy", ""] + greedy_table(summaries)
    lines += ["## Spread across repeats (overall speedup per repeat)", ""]
    lines += spread_table(document["spread"])
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(r) + " |" for r in rows] + [""]


def leaderboard(summaries: list[Summary]) -> list[str]:
    categories = sorted({s.category for s in summaries} - {OVERALL})
    by = {(s.method, s.category): s for s in summaries}
    rows = []
    for method in dict.fromkeys(s.method for s in summaries):
        overall = by[(method, OVERALL)]
        rows.append([method] + [_f(by[(method, c)].speedup, suffix="x") if (method, c) in by
                                else "-" for c in categories] +
                    [_f(overall.speedup, suffix="x"), _f(overall.tokens_per_s, 1),
                     _f(overall.tokens_per_call), _f(overall.mean_gamma)])
    return _table(["method"] + categories + ["overall", "tok/s", "tokens/call", "nodes/call"],
                  rows)


def table2(summaries: list[Summary]) -> list[str]:
    rows = [[s.category, s.method, f"{s.temperature:g}", str(s.gamma), _f(s.alpha),
             _f(s.speedup, suffix="x")]
            for s in summaries if s.family == "specdec" and s.drafter and s.category != OVERALL]
    return _table(["task", "method", "temp", "gamma", "alpha", "speed"], rows)


def theory_table(summaries: list[Summary]) -> list[str]:
    rows = [[s.method, f"{s.temperature:g}", _f(s.acceptance_rate), _f(s.alpha),
             _f(s.mean_gamma), _f(s.c, 3), _f(s.v), _f(s.tokens_per_call),
             _f(s.predicted_speedup, suffix="x"), _f(s.decode_speedup, suffix="x"),
             _f(s.efficiency)]
            for s in summaries if s.category == OVERALL and s.alpha is not None]
    return _table(["method", "temp", "accept frac", "alpha (sum min)", "nodes/call", "c", "v",
                   "tokens/call", "predicted S", "decode speedup", "measured/predicted"], rows)


def profile_table(summaries: list[Summary]) -> list[str]:
    rows = [[s.method, f"{s.temperature:g}"] +
            [_f(100 * s.profile[k], 1, "%") for k in ("prefill", "drafter", "target", "overhead")]
            + [str(s.drafter_failures)]
            for s in summaries if s.category == OVERALL and s.profile]
    return _table(["method", "temp", "prefill", "drafter", "target (decode)", "overhead",
                   "drafter failures"], rows)


def greedy_table(summaries: list[Summary]) -> list[str]:
    rows = [[s.method, f"{s.greedy_differ} / {s.prompts}",
             ", ".join(map(str, s.first_differences[:12])) or "-"]
            for s in summaries if s.category == OVERALL and s.greedy_differ is not None]
    return _table(["method", "outputs differing", "first differing positions"], rows)


def spread_table(spread: list[dict]) -> list[str]:
    rows = [[s["method"], f"{s['temperature']:g}", ", ".join(f"{x:.2f}" for x in s["speedups"])]
            for s in spread if s["speedups"]]
    return _table(["method", "temp", "speedup per repeat"], rows)
