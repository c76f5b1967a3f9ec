"""Batched decoding benchmark (CPU or GPU): aggregate tokens/s by batch size, with and without
speculation, and the cost of the ragged cache layout.

One interleaved run on ONE loaded model and the same prompts: for every repeat, every batch
size B and every method, `generate_batch(prompts, max_batch_size=B)` decodes all prompts
(B at a time, rows joining as others finish); aggregate tokens/s = tokens / wall time.
Methods: plain (gamma 0), n-gram lookup with the batch controller (gamma auto), n-gram with
a fixed gamma. Then the layout check: one step of 8 rows of spread lengths in one forward
(attention over the longest row) against the same rows at equal lengths and against 8
separate one-row forwards (what per-row caches would cost).

    python benchmarks/batch.py --target qwen2.5-coder-0.5b --threads 2 --out benchmarks/batch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.factory import build_gamma
from specdec.drafters.ngram import NgramDrafter
from specdec.models import load_model
from specdec.prompts import user_prompt_ids
from specdec.runtime.device import synchronize
from specdec.runtime.rows import StaticRows

TASKS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain what a hash map is and write a tiny one in Python.",
    "Write a binary search over a sorted list in Python, with a docstring.",
    "Refactor this loop into a list comprehension: result = []\nfor x in xs:\n    "
    "if x % 2 == 0:\n        result.append(x * x)",
    "Write a Python class for a stack with push, pop and peek.",
    "Write a function that merges two sorted lists into one sorted list.",
    "Write quicksort in Python and explain its complexity.",
    "Write a Python function that counts word frequencies in a text.",
    "Write a function that parses 'key=value' lines into a dict, skipping comments.",
    "Write a Python generator that yields Fibonacci numbers.",
    "Write a function that flattens a nested list of lists in Python.",
    "Write a Python function that validates an email address with a regex.",
    "Write a function that returns the n most common elements of a list.",
    "Write a Python context manager that times a block of code.",
    "Write a function that converts a Roman numeral to an integer.",
    "Write a breadth-first search over a graph given as an adjacency dict.",
]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fixed-gamma", type=int, default=3)
    parser.add_argument("--methods", default="plain,ngram auto,ngram fixed")
    parser.add_argument("--no-layout", action="store_true", help="skip the cache layout check")
    parser.add_argument("--out", default="benchmarks/batch")
    return parser.parse_args()


def methods(target, fixed_gamma: int) -> dict[str, SpeculativeDecoder]:
    return {
        "plain": SpeculativeDecoder(target, None, 0),
        "ngram auto": SpeculativeDecoder(target, NgramDrafter(), build_gamma("auto")),
        f"ngram g={fixed_gamma}": SpeculativeDecoder(target, NgramDrafter(), fixed_gamma),
    }


def throughput(decoder: SpeculativeDecoder, prompts: list[list[int]], params: SamplingParams,
               batch: int) -> dict:
    synchronize(decoder.target.device)
    start = time.perf_counter()
    results = decoder.generate_batch(prompts, params, max_batch_size=batch)
    synchronize(decoder.target.device)
    wall = time.perf_counter() - start
    tokens = sum(len(r.tokens) for r in results)
    drafted = sum(r.stats.drafted for r in results)
    accepted = sum(r.stats.accepted for r in results)
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "drafted": drafted, "accepted": accepted,
            "steps": sum(r.stats.target_calls for r in results)}


def layout(target, rows_n: int = 8, width: int = 4, repeats: int = 5) -> dict:
    """Seconds of one step (rows_n blocks of `width`) by how the rows' lengths lie."""
    spread = [64 * 2 ** (i % 5) for i in range(rows_n)]  # 64 .. 1024
    equal = [max(spread)] * rows_n
    out = {}

    def timed(step) -> float:
        times = []
        for _ in range(repeats):
            synchronize(target.device)
            start = time.perf_counter()
            step()
            synchronize(target.device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for label, lengths in (("one forward, spread lengths", spread),
                           ("one forward, equal lengths", equal)):
        rows = StaticRows(target, rows_n)
        for n in lengths:
            rows.add(torch.randint(0, 1000, (1, n + 1)), reserve=64)
        block = torch.randint(0, 1000, (rows_n, width))

        def step(rows=rows, block=block) -> None:
            rows.extend(block)
            rows.rollback([width] * rows_n)
        step()
        out[label] = timed(step)
        del rows

    singles = []
    for n in spread:  # per-row caches: each row its own forward
        single = StaticRows(target, 1)
        single.add(torch.randint(0, 1000, (1, n + 1)), reserve=64)
        singles.append(single)

    def separate() -> None:
        for single in singles:
            single.extend(torch.randint(0, 1000, (1, width)))
            single.rollback([width])
    separate()
    out["separate forwards (per-row caches)"] = timed(separate)
    out["lengths"] = spread
    return out


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    target = load_model(args.target, dtype=args.dtype, device=args.device)
    tokenizer = target.tokenizer
    prompts = [user_prompt_ids(tokenizer, t) for t in TASKS[: args.prompts]]
    params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens, ignore_eos=True)
    batches = [int(b) for b in args.batches.split(",")]
    wanted = args.methods.split(",")
    decoders = {name: d for name, d in methods(target, args.fixed_gamma).items()
                if name in wanted or (name.startswith("ngram g=") and "ngram fixed" in wanted)}
    decoders["plain"].generate(prompts[0], SamplingParams(temperature=0, max_new_tokens=4))
    runs: dict[str, dict[int, list[dict]]] = {m: {b: [] for b in batches} for m in decoders}
    for repeat in range(args.repeats):
        for batch in batches:
            for name, decoder in decoders.items():
                run = throughput(decoder, prompts, params, batch)
                runs[name][batch].append(run)
                print(f"repeat {repeat} batch {batch:>2} {name:<12} "
                      f"{run['tokens_per_s']:7.2f} tok/s  ({run['wall_s']:.1f}s)",
                      file=sys.stderr, flush=True)
    layout_s = {} if args.no_layout else layout(target)
    load_after = os.getloadavg()
    report = {"target": target.name, "threads": args.threads, "device": args.device,
              "dtype": str(target.model.dtype).removeprefix("torch."),
              "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats, "load_before": load_before, "load_after": load_after,
              "runs": runs, "layout_s": layout_s}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report, batches))
    print(markdown(report, batches))
    return 0


def markdown(report: dict, batches: list[int]) -> str:
    runs = report["runs"]
    plain = {b: statistics.median(r["tokens_per_s"] for r in runs["plain"][b]) for b in batches}
    lines = [f"# Batched decoding: {report['target']}, {report['device']}, "
             f"{report.get('dtype', '')}, {report['threads']} threads",
             "",
             f"{report['prompts']} prompts x {report['max_new_tokens']} tokens (greedy, EOS "
             f"ignored), decoded B at a time; median of {report['repeats']} interleaved "
             f"repeats. Load average before {report['load_before'][0]:.2f}, after "
             f"{report['load_after'][0]:.2f}.",
             "",
             "| method | " + " | ".join(f"B={b} tok/s" for b in batches) +
             " | vs plain at same B |",
             "|---|" + "---|" * (len(batches) + 1)]
    for name, by_batch in runs.items():
        medians = {b: statistics.median(r["tokens_per_s"] for r in by_batch[b]) for b in batches}
        ratios = ", ".join(f"{medians[b] / plain[b]:.2f}" for b in batches)
        accepted = sum(r["accepted"] for b in batches for r in by_batch[b])
        drafted = sum(r["drafted"] for b in batches for r in by_batch[b])
        label = name + (f" (accept {accepted / drafted:.0%})" if drafted else "")
        lines.append(f"| {label} | " + " | ".join(f"{medians[b]:.2f}" for b in batches) +
                     f" | {ratios} |")
    lines += ["", f"Aggregate scaling of plain: B=16 / B=1 = "
              f"{plain[batches[-1]] / plain[batches[0]]:.2f}x.", "",
              ]
    if not report["layout_s"]:
        return "\n".join(lines) + "\n"
    lines += ["## Cache layout (one step, 8 rows x 4 tokens, median of 5)", "",
              f"Row lengths {report['layout_s']['lengths']}.", "",
              "| layout | ms |", "|---|---|"]
    for label, seconds in report["layout_s"].items():
        if label != "lengths":
            lines.append(f"| {label} | {seconds * 1000:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
