"""Self-speculation with a float32 verifier vs everything in bfloat16 (issue 11), ONE run.

On this CPU (AVX512-BF16, no AMX) a bf16 forward's cost grows with the tokens it carries
(verify of gamma + 1 tokens costs 2.2-2.7 one-token steps), while float32 GEMMs are nearly
flat over a few rows. So a float32 target can verify a block for about one step's cost, at
the price of a slower one-token step. This run puts both in one interleaved table:

    python benchmarks/verify_dtype.py [--per-category 2] [--max-new-tokens 128]
        [--temperatures 0,1] [--threads 2] [--max-minutes 30] [--out benchmarks/self_spec]

Methods: plain decoding in bf16 (the reference every ratio uses) and float32, and each drafter
(default `self@int4`: an int4 trunk from the target's own weights) over each target dtype,
at each gamma given as SPEC@G1/G2 (default auto).
Records are journalled to <out>/verify_dtype.jsonl as they are made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from specdec.bench.methods import Method, specdec_method
from specdec.bench.ratios import ratio_table
from specdec.bench.runner import Prompt, RunConfig, run
from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.drafters.factory import build_drafter, build_gamma, split_gammas
from specdec.machine import load_average, load_text
from specdec.models.loading import load_model
from specdec.prompts import user_prompt_ids

REFERENCE = "bfloat16 plain"


def build(args: argparse.Namespace) -> tuple[list[Method], object]:
    methods, first = [], None
    for dtype in ("bfloat16", "float32"):
        target = load_model(args.target, dtype=dtype, threads=args.threads)
        first = first or target
        methods.append(specdec_method(target, None, 0, f"{dtype} plain"))
        for entry in args.drafts.split(","):
            spec, gammas = split_gammas(entry)
            for gamma in gammas or ["auto"]:
                drafter = build_drafter(spec, target, lambda s, d=dtype: load_model(s, dtype=d))
                methods.append(specdec_method(target, drafter, build_gamma(gamma),
                                              f"{dtype} {spec} g={gamma}", spec, gamma))
    return methods, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--drafts", default="self@int4@2/auto",
                        help="drafter specs, each optionally SPEC@G1/G2 (default gamma auto)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperatures", default="0,1")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/self_spec"))
    args = parser.parse_args(argv)
    temperatures = tuple(float(t) for t in args.temperatures.split(","))
    torch.set_num_threads(args.threads)
    load_before, start = load_average(), time.perf_counter()
    methods, target = build(args)
    questions = load_questions(args.questions, per_category=args.per_category)
    prompts = [Prompt(q, user_prompt_ids(target.tokenizer, q.text)) for q in questions]
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / "verify_dtype.jsonl"
    journal.unlink(missing_ok=True)
    limit = None if args.max_minutes is None else 60 * args.max_minutes
    records = run(methods, prompts, RunConfig(temperatures, args.max_new_tokens,
                                              warmup_tokens=8, max_seconds=limit,
                                              journal=journal))
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "seconds": time.perf_counter() - start, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "threads": args.threads,
            "questions_run": sorted({r.question_id for r in records}),
            "load_average_before": load_before, "load_average_after": load_average()}
    lines = [f"# float32 vs bfloat16 verification, self-speculation on {args.target}", "",
             f"`{meta['command']}`", "",
             f"{len(meta['questions_run'])} questions x T {args.temperatures}, "
             f"{args.max_new_tokens} new tokens, {args.threads} threads, "
             f"{meta['seconds'] / 60:.1f} min; load average before {load_text(load_before)}, "
             f"after {load_text(meta['load_average_after'])} (the run's own threads included). "
             "tok/s includes prefill.", "",
             *ratio_table(records, [m.name for m in methods], temperatures, REFERENCE), ""]
    doc = {"meta": meta, "records": [dataclasses.asdict(r) for r in records]}
    (args.out / "verify_dtype.json").write_text(json.dumps(doc, indent=1, default=str))
    (args.out / "verify_dtype.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
