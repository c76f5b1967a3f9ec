"""Block verification vs Algorithm 1 (issue 30): acceptance and speed per drafter on
Spec-Bench dev at temperature 1, both rules in ONE interleaved run, the gain with its interval.

    python benchmarks/block_verification.py [--per-category 3] [--max-new-tokens 128]
        [--gamma auto] [--drafters smollm2-135m@int8,ngram] [--device cpu] [--threads 1]
        [--repeats 1] [--max-minutes M] [--out benchmarks/results] [--name block_verification]

Every question runs under both rules with the same seed (uncoupled sampling: coupled=False),
the method order rotating from question to question (bench.runner.run). Reports per drafter
and rule: acceptance rate (accepted / drafted), tokens per target call, tokens/s; then block
verification's speed over Algorithm 1's: the ratio of total tokens/s and a 95% bootstrap
interval over questions (paired: each question's two runs resampled together). A drafter
without a q (ngram, suffix) drafts deterministically: block verification keeps at least as
many tokens there too, the gain is usually larger with a model drafter's q.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

from specdec.bench.methods import Method, specdec_method
from specdec.bench.runner import Prompt, Record, RunConfig, run
from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.drafters.factory import build_drafter, build_gamma
from specdec.machine import load_average, load_text
from specdec.models.loading import load_model
from specdec.prompts import user_prompt_ids
from specdec.sampling import SamplingParams

RULES = {"algorithm1": False, "block": True}  # rule name -> block_verification
BOOTSTRAP = 2000


def with_rule(method: Method, block: bool, name: str) -> Method:
    """The same method under uncoupled sampling with the given line rule."""
    inner = method.run

    def run_rule(prompt: list[int], params: SamplingParams):
        return inner(prompt, dataclasses.replace(params, coupled=False,
                                                 block_verification=block))

    return dataclasses.replace(method, name=name, run=run_rule)


def build(args: argparse.Namespace) -> tuple[list[Method], object]:
    target = load_model(args.target, dtype=args.dtype, threads=args.threads, device=args.device)
    cache: dict[str, object] = {}

    def loader(spec: str):
        if spec not in cache:
            cache[spec] = load_model(spec, dtype=args.dtype, threads=args.threads,
                                     device=args.device)
        return cache[spec]

    methods = []
    for spec in args.drafters.split(","):
        for rule, block in RULES.items():
            drafter = build_drafter(spec, target, loader)
            method = specdec_method(target, drafter, build_gamma(args.gamma), "", spec,
                                    args.gamma)
            methods.append(with_rule(method, block, f"specdec {spec} {rule}"))
    return methods, target


def _rate(records: list[Record]) -> float:
    seconds = sum(r.seconds for r in records)
    return sum(r.n_tokens for r in records) / seconds if seconds else 0.0


def gain(token: list[Record], block: list[Record], seed: int = 0) -> tuple[float, float, float]:
    """Block's tokens/s over Algorithm 1's, and a 95% paired bootstrap interval over the
    (question, repeat) pairs both rules completed."""
    pairs = {(r.question_id, r.repeat): [r] for r in token}
    both = [(pairs[(r.question_id, r.repeat)][0], r) for r in block
            if (r.question_id, r.repeat) in pairs]
    if not both:
        return float("nan"), float("nan"), float("nan")
    rng = random.Random(seed)
    ratios = []
    for _ in range(BOOTSTRAP):
        draw = [both[rng.randrange(len(both))] for _ in both]
        ratios.append(_rate([b for _, b in draw]) / max(_rate([t for t, _ in draw]), 1e-12))
    ratios.sort()
    whole = _rate([b for _, b in both]) / max(_rate([t for t, _ in both]), 1e-12)
    return whole, ratios[int(0.025 * BOOTSTRAP)], ratios[int(0.975 * BOOTSTRAP) - 1]


def table(records: list[Record], drafters: list[str]) -> list[str]:
    def pick(name: str) -> list[Record]:
        return [r for r in records if r.method == name and not r.error]

    lines = ["| drafter | rule | acceptance | tokens/call | tok/s |", "|---|---|---|---|---|"]
    for spec in drafters:
        for rule in RULES:
            rs = pick(f"specdec {spec} {rule}")
            drafted = sum(r.stats["drafted"] for r in rs)
            accepted = sum(r.stats["accepted"] for r in rs)
            calls = sum(r.stats["target_calls"] for r in rs)
            generated = sum(r.stats["generated"] for r in rs)
            lines.append(f"| {spec} | {rule} | {accepted / max(drafted, 1):.3f} | "
                         f"{generated / max(calls, 1):.2f} | {_rate(rs):.2f} |")
    lines += ["", "| drafter | block / algorithm1 tok/s | 95% interval (paired bootstrap) |",
              "|---|---|---|"]
    for spec in drafters:
        whole, low, high = gain(pick(f"specdec {spec} algorithm1"), pick(f"specdec {spec} block"))
        lines.append(f"| {spec} | {whole:.3f}x | [{low:.3f}, {high:.3f}] |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--drafters", default="smollm2-135m@int8,ngram")
    parser.add_argument("--gamma", default="auto")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 where native")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-category", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new question after this many minutes")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="block_verification", help="output file stem")
    args = parser.parse_args(argv)
    if args.temperature <= 0:
        parser.error("--temperature must be > 0: greedy has no sampling rule to compare")
    torch.set_num_threads(args.threads)
    load_before = load_average()
    start = time.perf_counter()
    methods, target = build(args)
    questions = load_questions(args.questions, per_category=args.per_category)
    prompts = [Prompt(q, user_prompt_ids(target.tokenizer, q.text)) for q in questions]
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / f"{args.name}.jsonl"
    journal.unlink(missing_ok=True)
    limit = None if args.max_minutes is None else 60 * args.max_minutes
    records = run(methods, prompts, RunConfig((args.temperature,), args.max_new_tokens,
                                              repeats=args.repeats, warmup_tokens=4,
                                              max_seconds=limit, journal=journal))
    load_after = load_average()
    drafters = args.drafters.split(",")
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "seconds": time.perf_counter() - start, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "device": args.device,
            "threads": args.threads, "questions": [q.question_id for q in questions],
            "questions_run": sorted({r.question_id for r in records}),
            "load_average_before": load_before, "load_average_after": load_after}
    lines = [f"# Block verification vs Algorithm 1 on {args.target} ({args.device}, "
             f"T={args.temperature:g}, gamma {args.gamma}, {args.max_new_tokens} new tokens, "
             f"{len(questions)} questions x {args.repeats})", "", f"`{meta['command']}`", "",
             f"{len(meta['questions_run'])} of {len(questions)} questions run in "
             f"{meta['seconds'] / 60:.1f} min; load average (1, 5, 15 min) before "
             f"{load_text(load_before)}, after {load_text(load_after)}.", "",
             *table(records, drafters), ""]
    doc = {"meta": meta, "records": [dataclasses.asdict(r) for r in records]}
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1, default=str))
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
