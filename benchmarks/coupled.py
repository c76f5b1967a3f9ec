"""Verification rules compared (issues 12 and 30): acceptance and speed per drafter on
Spec-Bench dev at temperature 1, every rule in ONE interleaved run.

    python benchmarks/coupled.py [--rules rejection,coupled] [--per-category 3]
        [--max-new-tokens 128] [--gamma auto] [--device cpu] [--repeats 1]
        [--drafters ngram,self@int4@vocab=32768,smollm2-135m@int8] [--threads 1]
        [--no-plain] [--max-minutes M] [--out benchmarks/results] [--name coupled]

Rules: rejection (Algorithm 1), coupled (seed-keyed noise: what "same seed, same text"
costs) and block (block verification, Sun et al. 2025). Block verification against Algorithm
1 (issue 30): `--rules rejection,block --no-plain --name block_verification`.

Every question runs with its own seed under every rule: plain decoding (the speedup's
reference for each rule: plain coupled sampling pays for the noise too) and each drafter.
Reports per drafter and rule: acceptance rate, tokens per target call, tokens/s, speedup over
plain decoding with the same rule, and for the coupled rule how many outputs equal plain
coupled sampling with the same seed (the promise; bf16 logits may break it, see README); then
each further rule's tokens/s over the first rule's, with a 95% bootstrap interval over
questions (paired: a question's runs resampled together). --no-plain skips the plain methods.
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

from specdec.bench.methods import PLAIN, Method, specdec_method
from specdec.bench.runner import Prompt, Record, RunConfig, run
from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.drafters.factory import build_drafter, build_gamma
from specdec.machine import load_average, load_text
from specdec.models.loading import load_model
from specdec.prompts import user_prompt_ids
from specdec.sampling import SamplingParams

PLAIN_COUPLED = "specdec plain coupled"
# rule -> the SamplingParams fields that choose it
RULES = {"rejection": {"coupled": False}, "coupled": {"coupled": True},
         "block": {"coupled": False, "block_verification": True}}
# without drafts every uncoupled rule is plain sampling: one plain method per noise
PLAIN_OF = {"rejection": PLAIN, "coupled": PLAIN_COUPLED, "block": PLAIN}
BOOTSTRAP = 2000


def with_rule(method: Method, rule: str, name: str) -> Method:
    """The same method with the verification rule fixed, whatever the run config says."""
    inner = method.run

    def run_rule(prompt: list[int], params: SamplingParams):
        return inner(prompt, dataclasses.replace(params, **RULES[rule]))

    return dataclasses.replace(method, name=name, run=run_rule)


def build(args: argparse.Namespace, rules: list[str]) -> list[Method]:
    target = load_model(args.target, dtype=args.dtype, threads=args.threads, device=args.device)
    cache: dict[str, object] = {}

    def loader(spec: str):
        if spec not in cache:
            cache[spec] = load_model(spec, dtype=args.dtype, threads=args.threads,
                                     device=args.device)
        return cache[spec]

    methods = []
    if not args.no_plain:
        plain = specdec_method(target, None, 0, PLAIN)
        methods += [with_rule(plain, rule, PLAIN_OF[rule]) for rule in rules
                    if PLAIN_OF[rule] not in {m.name for m in methods}]
    for spec in args.drafters.split(","):
        for rule in rules:
            drafter = build_drafter(spec, target, loader)
            method = specdec_method(target, drafter, build_gamma(args.gamma), "", spec, args.gamma)
            methods.append(with_rule(method, rule, f"specdec {spec} {rule}"))
    return methods, target


def _rate(records: list[Record]) -> float:
    seconds = sum(r.seconds for r in records)
    return sum(r.n_tokens for r in records) / seconds if seconds else 0.0


def gain(base: list[Record], other: list[Record], seed: int = 0) -> tuple[float, float, float]:
    """other's tokens/s over base's on the (question, repeat) pairs both completed, and a 95%
    paired bootstrap interval."""
    first = {(r.question_id, r.repeat): r for r in base}
    pairs = [(first[(r.question_id, r.repeat)], r) for r in other
             if (r.question_id, r.repeat) in first]
    if not pairs:
        return float("nan"), float("nan"), float("nan")

    def ratio(drawn: list[tuple[Record, Record]]) -> float:
        return _rate([o for _, o in drawn]) / max(_rate([b for b, _ in drawn]), 1e-12)

    rng = random.Random(seed)
    draws = sorted(ratio([pairs[rng.randrange(len(pairs))] for _ in pairs])
                   for _ in range(BOOTSTRAP))
    return ratio(pairs), draws[int(0.025 * BOOTSTRAP)], draws[int(0.975 * BOOTSTRAP) - 1]


def table(records: list[Record], drafters: list[str], rules: list[str],
          plain: bool) -> list[str]:
    def pick(name: str) -> list[Record]:
        return [r for r in records if r.method == name and not r.error]

    plain_rate = {rule: _rate(pick(PLAIN_OF[rule])) for rule in rules}
    reference = {r.question_id: r.tokens for r in pick(PLAIN_COUPLED)}
    lines = ["| drafter | rule | acceptance | tokens/call | tok/s | vs plain (same rule) | "
             "same text as plain coupled |", "|---|---|---|---|---|---|---|"]
    if plain:
        for rule in rules:
            lines.append(f"| none | {rule} | - | 1.00 | {plain_rate[rule]:.2f} | 1.00x | - |")
    for spec in drafters:
        for rule in rules:
            rs = pick(f"specdec {spec} {rule}")
            drafted = sum(r.stats["drafted"] for r in rs)
            accepted = sum(r.stats["accepted"] for r in rs)
            calls = sum(r.stats["target_calls"] for r in rs)
            generated = sum(r.stats["generated"] for r in rs)
            speed = _rate(rs)
            vs = f"{speed / plain_rate[rule]:.2f}x" if plain and plain_rate[rule] else "-"
            same = "-"
            if rule == "coupled" and reference:
                same = f"{sum(r.tokens == reference.get(r.question_id) for r in rs)}/{len(rs)}"
            lines.append(f"| {spec} | {rule} | {accepted / max(drafted, 1):.3f} | "
                         f"{generated / max(calls, 1):.2f} | {speed:.2f} | {vs} | {same} |")
    if len(rules) > 1:
        lines += ["", f"| drafter | rule | tok/s over {rules[0]}'s | 95% interval (paired "
                  "bootstrap over questions) |", "|---|---|---|---|"]
        for spec in drafters:
            for rule in rules[1:]:
                whole, low, high = gain(pick(f"specdec {spec} {rules[0]}"),
                                        pick(f"specdec {spec} {rule}"))
                lines.append(f"| {spec} | {rule} | {whole:.3f}x | [{low:.3f}, {high:.3f}] |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--drafters", default="ngram,self@int4@vocab=32768,smollm2-135m@int8")
    parser.add_argument("--rules", default="rejection,coupled",
                        help=f"comma-separated, the first the gain's reference: {', '.join(RULES)}")
    parser.add_argument("--gamma", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-category", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--no-plain", action="store_true", help="acceptance only: no plain runs")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new question after this many minutes")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="coupled", help="output file stem")
    args = parser.parse_args(argv)
    if args.temperature <= 0:
        parser.error("--temperature must be > 0: greedy has no sampling rule to compare")
    rules = args.rules.split(",")
    if set(rules) - set(RULES) or len(set(rules)) != len(rules):
        parser.error(f"--rules takes distinct names among {', '.join(RULES)}, got {args.rules}")
    torch.set_num_threads(args.threads)
    load_before = load_average()
    start = time.perf_counter()
    methods, target = build(args, rules)
    questions = load_questions(args.questions, per_category=args.per_category)
    prompts = [Prompt(q, user_prompt_ids(target.tokenizer, q.text)) for q in questions]
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / f"{args.name}.jsonl"
    journal.unlink(missing_ok=True)
    limit = None if args.max_minutes is None else 60 * args.max_minutes
    records = run(methods, prompts, RunConfig((args.temperature,), args.max_new_tokens,
                                              repeats=args.repeats, warmup_tokens=4,
                                              max_seconds=limit,
                                              journal=journal))
    load_after = load_average()
    drafters = args.drafters.split(",")
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "seconds": time.perf_counter() - start, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "device": args.device,
            "threads": args.threads,
            "questions": [q.question_id for q in questions],
            "questions_run": sorted({r.question_id for r in records}),
            "load_average_before": load_before, "load_average_after": load_after}
    lines = [f"# Rules {', '.join(rules)} on {args.target} ({args.dtype}, {args.device}, "
             f"T={args.temperature:g}, gamma {args.gamma}, {args.max_new_tokens} new tokens, "
             f"{len(questions)} questions x {args.repeats}, {args.threads} threads)", "",
             f"`{meta['command']}`", "",
             f"{len(meta['questions_run'])} of {len(questions)} questions run in "
             f"{meta['seconds'] / 60:.1f} min; load average (1, 5, 15 min) before "
             f"{load_text(load_before)}, after {load_text(load_after)} (the run's own threads "
             "included).", "",
             *table(records, drafters, rules, not args.no_plain), ""]
    doc = {"meta": meta, "records": [dataclasses.asdict(r) for r in records]}
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1, default=str))
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
