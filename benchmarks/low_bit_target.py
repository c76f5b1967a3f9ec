"""A low-bit target (issue 19's optional part): quality and speed of an int4 target, ONE run.

    python benchmarks/low_bit_target.py [--per-category 2] [--max-new-tokens 128]
        [--temperatures 0,1] [--threads 2] [--max-minutes 30] [--out benchmarks/low_bit]

The bf16 target's linear layers requantized to int4 (groups of 32, torch's CPU int4 kernel,
every pass in 4 bits: `specdec.runtime.low_bit_view.low_bit_target`) is a different model, so
quality comes first, measured against the bf16 model on the same questions:
- agreement: the bf16 model's greedy continuation (teacher-forced) and the int4 model's argmax
  at each of its positions;
- perplexity of each model on the questions' own text.
Then speed, every method interleaved per question: bf16 plain (the reference), int4 plain,
int4 with prompt lookup (ngram, gamma auto) and llama.cpp plain on the GGUF (when installed),
same threads. Whether the int4 kernel gives one numerics for every row count is probed first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from specdec.bench import llamacpp
from specdec.bench.methods import specdec_method
from specdec.bench.ratios import ratio_table
from specdec.bench.runner import Prompt, RunConfig, run
from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.drafters.factory import build_drafter, build_gamma
from specdec.machine import OtherJobsMeter, load_average, load_text
from specdec.models.fetch import ensure_model
from specdec.models.loading import load_model
from specdec.prompts import user_prompt_ids
from specdec.runtime.low_bit_view import low_bit_target
from specdec.sampling import SamplingParams

REFERENCE = "bf16 plain"


def row_invariance(model, rows: int = 16) -> list[int]:
    """Widths 2..rows whose logits differ from the one-token forwards' (empty: invariant)."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 30_000, (1, 40), generator=generator)
    tokens = torch.randint(0, 30_000, (1, rows), generator=generator)
    model.prefill(prompt)
    reference = torch.cat([model.extend(tokens[:, i:i + 1]) for i in range(rows)], 1)
    differing = []
    for k in range(2, rows + 1):
        model.rollback(model.cached_length - 39)
        if not torch.equal(model.extend(tokens[:, :k]), reference[:, :k]):
            differing.append(k)
    return differing


def quality(full, low, prompts: list[list[int]], texts: list[str], tokens: int) -> dict:
    """Greedy agreement on the full model's continuations, and perplexity on the texts."""
    agree = total = 0
    params = SamplingParams(temperature=0, max_new_tokens=tokens)
    from specdec.decoding import SpeculativeDecoder

    plain = SpeculativeDecoder(full, None)
    for prompt in prompts:
        continuation = plain.generate(prompt, params).tokens
        sequence = torch.tensor([prompt + continuation])
        low.prefill(sequence[:, :len(prompt)])
        logits = low.extend(sequence[:, len(prompt) - 1:-1])
        predicted = logits[0].argmax(-1).tolist()
        agree += sum(p == t for p, t in zip(predicted, continuation, strict=True))
        total += len(continuation)
    return {"greedy_agreement": agree / total, "tokens_compared": total,
            "perplexity_full": _perplexity(full, texts), "perplexity_low": _perplexity(low, texts)}


def _perplexity(model, texts: list[str]) -> float:
    nll = count = 0.0
    for text in texts:
        ids = torch.tensor([model.tokenizer(text).input_ids[:256]])
        if ids.shape[1] < 3:
            continue
        model.prefill(ids[:, :1])
        logits = model.extend(ids[:, :-1])
        nll += torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--bits", type=int, default=4, choices=(4, 8))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--quality-tokens", type=int, default=64)
    parser.add_argument("--temperatures", default="0,1")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/low_bit"))
    args = parser.parse_args(argv)
    temperatures = tuple(float(t) for t in args.temperatures.split(","))
    torch.set_num_threads(args.threads)
    full = load_model(args.target, dtype="bfloat16", threads=args.threads)
    low = low_bit_target(full, args.bits)
    questions = load_questions(args.questions, per_category=args.per_category)
    prompts = [Prompt(q, user_prompt_ids(full.tokenizer, q.text)) for q in questions]
    invariance = {"bf16": row_invariance(full), f"int{args.bits}": row_invariance(low)}
    print(f"widths differing from one-token forwards: {invariance}", file=sys.stderr)
    measured = quality(full, low, [p.ids for p in prompts], [q.text for q in questions],
                       args.quality_tokens)
    print(f"quality: {measured}", file=sys.stderr)
    methods = [specdec_method(full, None, 0, REFERENCE),
               specdec_method(low, None, 0, f"int{args.bits} plain"),
               specdec_method(low, build_drafter("ngram", low, None), build_gamma("auto"),
                              f"int{args.bits} ngram g=auto", "ngram", "auto")]
    if llamacpp.available():
        methods.append(llamacpp.llamacpp_methods(ensure_model(args.target), args.threads)[0])
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / "low_bit_target.jsonl"
    journal.unlink(missing_ok=True)
    load_before, others, start = load_average(), OtherJobsMeter(), time.perf_counter()
    limit = None if args.max_minutes is None else 60 * args.max_minutes
    records = run(methods, prompts, RunConfig(temperatures, args.max_new_tokens,
                                              max_seconds=limit, journal=journal))
    meta = {"command": " ".join(["python benchmarks/low_bit_target.py", *(argv or sys.argv[1:])]),
            "seconds": time.perf_counter() - start, "torch": torch.__version__,
            "threads": args.threads, "questions_run": sorted({r.question_id for r in records}),
            "other_cores": others.other_cores(), "load_average_before": load_before,
            "load_average_after": load_average(), "row_invariance": invariance,
            "quality": measured}
    lines = [f"# int{args.bits} target vs bf16 target vs llama.cpp, {args.target}", "",
             f"`{meta['command']}`", "",
             f"{len(meta['questions_run'])} questions x T {args.temperatures}, "
             f"{args.max_new_tokens} new tokens, {args.threads} threads, "
             f"{meta['seconds'] / 60:.1f} min; other processes used "
             f"{meta['other_cores'] or 0:.2f} cores on average; load average before "
             f"{load_text(load_before)}. tok/s includes prefill.", "",
             f"Quality of int{args.bits} against bf16: greedy agreement "
             f"{measured['greedy_agreement']:.3f} over {measured['tokens_compared']} "
             "teacher-forced "
             f"positions; perplexity on the questions' text {measured['perplexity_full']:.2f} "
             f"(bf16) vs {measured['perplexity_low']:.2f} (int{args.bits}).", "",
             f"Widths 2..16 whose logits differ from one-token forwards: {invariance}.", "",
             *ratio_table(records, [m.name for m in methods], temperatures, REFERENCE,
                         "llama.cpp plain" if llamacpp.available() else None), ""]
    doc = {"meta": meta, "records": [dataclasses.asdict(r) for r in records]}
    (args.out / "low_bit_target.json").write_text(json.dumps(doc, indent=1, default=str))
    (args.out / "low_bit_target.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
