"""Drafters benchmark (issue 4): tokens/s of every drafter, controller vs fixed gamma, and
transformers' own equivalents, on Qwen2.5-Coder-0.5B in bf16, greedy, in ONE interleaved run.

    python benchmarks/drafters.py [--max-new-tokens 128] [--threads 2] [--out benchmarks/results]

Prompts: the first summarization question and a code question (124: find the bug) from
Spec-Bench's questions.dev.jsonl, plus one code-writing prompt of our own. Writes
drafters.md (tables) and drafters.json (summaries and per-generation records) under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from specdec.bench.methods import PLAIN, hf_methods, specdec_method
from specdec.bench.metrics import OVERALL, summarize
from specdec.bench.runner import Prompt, RunConfig, run
from specdec.bench.workloads import DEFAULT_QUESTIONS, Question
from specdec.decoding import SpeculativeDecoder
from specdec.drafters.factory import build_drafter, build_gamma
from specdec.models.loading import load_model
from specdec.prompts import user_prompt_ids
from specdec.sampling import SamplingParams

OWN_CODE = Question("own-code", "code", (
    "Write a Python function `parse_csv(path)` that reads a CSV file with a header row and "
    "returns a list of dicts, converting numeric fields to int or float. Add type hints."))
QUESTION_IDS = {"summarization": None, "coding": "124"}  # None: first of its category


def questions(path: Path) -> list[Question]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    chosen = []
    for category, wanted in QUESTION_IDS.items():
        row = next(r for r in rows if r["category"] == category
                   and (wanted is None or str(r["question_id"]) == wanted))
        chosen.append(Question(str(row["question_id"]), category, row["turns"][0]))
    return chosen + [OWN_CODE]


def bigram_corpus(path: Path, exclude: set[str]) -> Path:
    """The other Spec-Bench questions as a text corpus for the bigram drafter."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    text = "\n\n".join(t for r in rows if str(r["question_id"]) not in exclude for t in r["turns"])
    out = Path(tempfile.mkdtemp(prefix="specdec-bigram-")) / "corpus.txt"
    out.write_text(text, encoding="utf-8")
    return out


def sweep(draft_model: str, corpus: Path) -> list[tuple[str, list[int | str]]]:
    """(drafter spec, gammas): the controller and a few fixed gammas around the optimum."""
    fast = f"{draft_model}@int8"
    return [("ngram", ["auto", 3, 10]),
            (fast, ["auto", 1, 2, 3]),
            (draft_model, ["auto"]),  # bf16 drafter: what int8 weights buy
            (f"ngram+{fast}", ["auto", 3]),
            (f"bigram:{corpus}", ["auto", 1])]


def build(args: argparse.Namespace, corpus: Path):
    target = load_model(args.target, dtype=args.dtype, threads=args.threads)
    small = load_model(args.draft, dtype=args.dtype, threads=args.threads)
    def loader(spec: str):
        return small if spec == args.draft else load_model(spec, args.dtype, args.threads)
    eos = SpeculativeDecoder(target, None, 0)._eos_ids(SamplingParams())
    methods = [specdec_method(target, None, 0, PLAIN)]
    # transformers' universal assisted generation changes its assistant in place (its lm_head
    # was seen cut down to the shared vocabulary): give it a copy of its own
    assistant = copy.deepcopy(small.model)
    if not args.only:
        methods += hf_methods(target.model, eos, {args.draft: (assistant, small.tokenizer)},
                              target.tokenizer, args.lookup_tokens)
    for spec, gammas in sweep(args.draft, corpus):
        label = spec.split(":")[0]  # bigram:/tmp/... -> bigram
        if args.only and label != args.only:
            continue
        for gamma in gammas:
            drafter = build_drafter(spec, target, loader)
            methods.append(specdec_method(target, drafter, build_gamma(gamma),
                                          f"specdec {label} g={gamma}", label, gamma))
    return target, methods


def drafter_table(summaries) -> tuple[list[str], dict]:
    """Per drafter: controller vs best fixed gamma (overall tokens/s), and the goals."""
    overall = {s.method: s for s in summaries if s.category == OVERALL}
    lines = ["| drafter | controller tok/s | best fixed gamma | its tok/s | controller / best |",
             "|---|---|---|---|---|"]
    best: dict = {}
    for drafter in dict.fromkeys(s.drafter for s in overall.values()
                                 if s.family == "specdec" and s.drafter):
        mine = [s for s in overall.values() if s.family == "specdec" and s.drafter == drafter]
        fixed = [s for s in mine if s.gamma != "auto"]
        auto = next((s for s in mine if s.gamma == "auto"), None)
        if not fixed:
            continue
        top = max(fixed, key=lambda s: s.tokens_per_s)
        ratio = auto.tokens_per_s / top.tokens_per_s if auto else float("nan")
        best[drafter] = {"auto": auto.tokens_per_s if auto else None, "best_gamma": top.gamma,
                         "best": top.tokens_per_s, "auto_over_best": ratio}
        lines.append(f"| {drafter} | {best[drafter]['auto']:.2f} | {top.gamma} | "
                     f"{top.tokens_per_s:.2f} | {ratio:.3f} |")
    return lines, best


def method_table(summaries, categories: list[str]) -> list[str]:
    by = {(s.method, s.category): s for s in summaries}
    methods = list(dict.fromkeys(s.method for s in summaries))
    head = ["method", *[f"{c} tok/s" for c in categories], "overall tok/s", "speedup",
            "alpha", "tokens/call", "greedy = plain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in methods:
        row = by[(name, OVERALL)]
        cells = [name] + [f"{by[(name, c)].tokens_per_s:.2f}" for c in categories]
        same = "" if row.greedy_differ is None else ("yes" if row.greedy_differ == 0
                                                       else f"{row.greedy_differ} differ")
        cells += [f"{row.tokens_per_s:.2f}", _f(row.speedup, "x"), _f(row.alpha),
                  _f(row.tokens_per_call), same]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _f(value, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--draft", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    # 1 thread: on a 2-core machine shared with other jobs, 2 OpenMP threads stall each other
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--lookup-tokens", type=int, default=10)
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", help="one drafter label (e.g. smollm2-135m@int8) vs plain")
    parser.add_argument("--name", default="drafters", help="output file stem")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = questions(args.questions)
    corpus = bigram_corpus(args.questions, {q.question_id for q in chosen})
    start = time.perf_counter()
    target, methods = build(args, corpus)
    prompts = [Prompt(q, user_prompt_ids(target.tokenizer, q.text)) for q in chosen]
    # warm up greedy only: a sampled universal assisted generation prunes the assistant's
    # lm_head in place, and its later greedy calls then fail (transformers 5.23)
    for method in methods:
        method.run(prompts[0].ids, SamplingParams(temperature=0.0, max_new_tokens=4))
    records = run(methods, prompts, RunConfig((0.0,), args.max_new_tokens, warmup_tokens=0))
    summaries = summarize(records, methods)
    categories = [q.category for q in chosen]
    best_lines, best = drafter_table(summaries)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "seconds": time.perf_counter() - start, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "threads": args.threads,
            "prompts": {q.category: q.question_id for q in chosen}}
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "best": best, "summaries": [s.to_dict() for s in summaries],
           "records": [asdict(r) for r in records]}
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1, default=str))
    md = [f"# Drafters on {args.target} ({args.dtype}, greedy, {args.max_new_tokens} new "
          f"tokens, {args.threads} threads)", "", f"`{meta['command']}`", "",
          *method_table(summaries, categories), "", *best_lines, ""]
    (args.out / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
