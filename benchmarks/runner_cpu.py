"""Runner benchmark (CPU): dynamic cache vs static cache vs static + compiled steps.

One interleaved run on the same prompts and threads: our plain and n-gram speculative
decoding on each runner, and transformers' own `generate`, all on ONE loaded model (the
runners wrap the same weights). Also the peak RSS growth of prefilling a long prompt the old
way (logits at every prompt position) and the new ways (no prompt logits).

    python benchmarks/runner_cpu.py --prompts 3 --max-new-tokens 128 --out benchmarks/runner
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
from specdec.bench.memory import peak_rss_growth
from specdec.bench.methods import hf_method
from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.drafters.factory import build_gamma
from specdec.drafters.ngram import NgramDrafter
from specdec.models import load_model, wrap
from specdec.prompts import chat_ids

CATEGORIES = ["summarization", "qa", "translation"]


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    base = load_model(args.target, dtype=args.dtype, runtime="dynamic")
    hf, tok = base.model, base.tokenizer
    runners = {"dynamic": base, "static": wrap(hf, tok, base.name)}
    compile_s = None
    if not args.no_compile:
        runners["static+compile"] = wrap(hf, tok, base.name, compile=True, widths=args.widths)
        start = time.perf_counter()
        runners["static+compile"].warmup(capacity=args.capacity)
        compile_s = time.perf_counter() - start
        print(f"compiled widths {args.widths} in {compile_s:.1f}s", file=sys.stderr)

    questions = load_questions(args.questions, CATEGORIES, per_category=1)[: args.prompts]
    prompts = [chat_ids(tok, [{"role": "user", "content": q.text}]) for q in questions]
    methods = {}
    for label, runner in runners.items():
        methods[f"{label} plain"] = SpeculativeDecoder(runner, None, 0)
        methods[f"{label} ngram auto"] = SpeculativeDecoder(runner, NgramDrafter(),
                                                            build_gamma("auto"))
    eos = set(base.eos_token_ids)
    transformers_plain = hf_method(hf, "transformers generate", eos)
    params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens,
                            ignore_eos=args.ignore_eos)
    names = [*methods, "transformers generate"]

    def run(name: str, prompt: list[int], p: SamplingParams) -> tuple[list[int], float]:
        start = time.perf_counter()
        if name == "transformers generate":
            outcome = transformers_plain.run(prompt, p)
            return outcome.tokens, time.perf_counter() - start
        result = methods[name].generate(prompt, p)
        return result.tokens, time.perf_counter() - start

    warm = SamplingParams(temperature=0, max_new_tokens=8)
    for name in names:  # one warm-up generation each
        run(name, prompts[0], warm)
    records = []
    for i, prompt in enumerate(prompts):
        order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            tokens, seconds = run(name, prompt, params)
            records.append({"method": name, "prompt": i, "category": questions[i].category,
                            "prompt_tokens": len(prompt), "tokens": tokens,
                            "seconds": seconds, "tok_s": len(tokens) / seconds})
            print(f"{name:28s} q{i} {len(tokens)} tokens {len(tokens) / seconds:6.2f} tok/s",
                  file=sys.stderr)
    memory = prefill_memory(base, runners["static"], questions_text(args), args.prefill_tokens)
    load_after = os.getloadavg()
    report = summarize(records, names, memory, compile_s, load_before, load_after, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def prefill_memory(dynamic, static, text: str, length: int) -> dict[str, float]:
    """Peak RSS growth (MB) of prefilling `length` tokens: old way vs the runners' prefill."""
    ids = dynamic.tokenizer(text, add_special_tokens=False).input_ids
    prompt = torch.tensor([(ids * (length // max(len(ids), 1) + 1))[:length]])

    def old_prefill():  # what prefill did before: logits (float32) at every prompt position
        dynamic.prefill(prompt[:, :1])
        return dynamic.extend(prompt[:, :-1]).shape

    out = {}
    for label, call in (("old (logits at every position)", old_prefill),
                        ("dynamic runner", lambda: dynamic.prefill(prompt)),
                        ("static runner", lambda: static.prefill(prompt))):
        _, growth = peak_rss_growth(call)
        out[label] = growth / 1e6
    return out


def questions_text(args: argparse.Namespace) -> str:
    return "\n\n".join(q.text for q in load_questions(args.questions))


def summarize(records, names, memory, compile_s, load_before, load_after, args) -> dict:
    reference = {r["prompt"]: r["tokens"] for r in records if r["method"] == "dynamic plain"}
    base = statistics.median(r["tok_s"] for r in records if r["method"] == "dynamic plain")
    rows = []
    for name in names:
        mine = [r for r in records if r["method"] == name]
        median = statistics.median(r["tok_s"] for r in mine)
        total = sum(len(r["tokens"]) for r in mine) / sum(r["seconds"] for r in mine)
        same = sum(r["tokens"] == reference[r["prompt"]] for r in mine)
        rows.append({"method": name, "median_tok_s": median, "pooled_tok_s": total,
                     "vs_dynamic_plain": median / base, "same_as_dynamic_plain": same,
                     "prompts": len(mine)})
    return {"command": "python " + " ".join(sys.argv), "target": args.target,
            "dtype": args.dtype, "threads": args.threads, "max_new_tokens": args.max_new_tokens,
            "ignore_eos": args.ignore_eos,
            "compile_widths": None if args.no_compile else list(args.widths),
            "compile_s": compile_s, "load_before": load_before, "load_after": load_after,
            "torch": torch.__version__, "rows": rows, "prefill_rss_mb": memory,
            "prefill_tokens": args.prefill_tokens, "records": records}


def markdown(report: dict) -> str:
    lines = [f"# Runner benchmark: {report['target']} {report['dtype']}, "
             f"{report['threads']} threads, {report['max_new_tokens']} new tokens, greedy",
             "", f"`{report['command']}`", "",
             f"Load average before {tuple(round(x, 2) for x in report['load_before'])}, after "
             f"{tuple(round(x, 2) for x in report['load_after'])}; torch {report['torch']}; "
             f"compile widths {report['compile_widths']}, compile time "
             f"{report['compile_s'] and round(report['compile_s'], 1)} s (not in tok/s).", "",
             "| method | median tok/s | pooled tok/s | vs dynamic plain (median) | "
             "outputs equal to dynamic plain |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['method']} | {row['median_tok_s']:.2f} | "
                     f"{row['pooled_tok_s']:.2f} | {row['vs_dynamic_plain']:.2f}x | "
                     f"{row['same_as_dynamic_plain']}/{row['prompts']} |")
    lines += ["", f"Peak RSS growth while prefilling a {report['prefill_tokens']}-token prompt:",
              "", "| prefill | MB |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in report["prefill_rss_mb"].items()]
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", default="qwen2.5-coder-0.5b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--questions", default=str(DEFAULT_QUESTIONS))
    p.add_argument("--widths", type=lambda s: tuple(int(x) for x in s.split(",")),
                   default=(1, 2, 4, 8, 16))
    p.add_argument("--capacity", type=int, default=2048, help="cache slots compiled for")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--ignore-eos", action="store_true",
                   help="every method generates exactly --max-new-tokens tokens")
    p.add_argument("--prefill-tokens", type=int, default=3000)
    p.add_argument("--out", default="benchmarks/runner")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
