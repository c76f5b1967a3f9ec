"""Constrained decoding on a JSON workload: speculative against plain, both held to the schema.

20 requests (benchmarks/structured/requests.json: 10 extractions, 10 function-argument
calls, each with its JSON schema; written for specdec, no third-party text) through the
target's chat template. One interleaved run on ONE loaded target: per repeat, per
temperature, per request, every method decodes it (plain = the same target with no drafter,
constrained the same way). Reports tokens/s per method and temperature, the speedup over
plain, the share of outputs that parse and validate (`jsonschema`), forced tokens per output
token, and the grammar's host time per token against the target's time per step.

    python benchmarks/structured/json_workload.py --target qwen2.5-coder-0.5b \
        --draft qwen2.5-coder-0.5b-q4 --threads 2 --out benchmarks/structured

`--llamacpp` adds llama.cpp (llama-cpp-python) on the same GGUF with its own JSON-schema
grammar (`LlamaGrammar.from_json_schema`, built inside the timed call as ours compiles inside
its own), same prompts, threads and temperatures (temperature only: top-k/p/min-p off).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from specdec import Constraint, SamplingParams, SpeculativeDecoder

HERE = Path(__file__).parent


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--draft", action="append", default=None,
                        help="drafter spec as `specdec generate --draft` takes (repeatable; "
                             "default: ngram)")
    parser.add_argument("--gamma", default="4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--temperatures", default="0,1")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20, help="the first N requests")
    parser.add_argument("--llamacpp", action="store_true",
                        help="also llama.cpp with its JSON-schema grammar on the same GGUF")
    parser.add_argument("--out", default=str(HERE))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import jsonschema

    from specdec.drafters.factory import build_drafter, build_gamma
    from specdec.models import load_model
    from specdec.prompts import user_prompt_ids

    data = json.loads((HERE / "requests.json").read_text())
    requests = data["requests"][: args.requests]
    target = load_model(args.target, threads=args.threads, device=args.device)
    loaded: dict[str, object] = {}

    def loader(spec: str):
        if spec not in loaded:
            loaded[spec] = load_model(spec, threads=args.threads, device=args.device)
        return loaded[spec]

    decoders = {"plain": SpeculativeDecoder(target, None, 0)}
    for spec in args.draft or ["ngram"]:
        decoders[spec] = SpeculativeDecoder(target, build_drafter(spec, target, loader),
                                            build_gamma(args.gamma))
    if args.llamacpp:
        decoders["llama.cpp grammar"] = LlamaCppGrammar(args.target, args.threads,
                                                        target.tokenizer)
    prompts = [user_prompt_ids(target.tokenizer, r["prompt"]) for r in requests]
    constraints = [Constraint.json_schema(r["schema"]) for r in requests]
    decoders["plain"].generate(prompts[0], SamplingParams(max_new_tokens=4,
                                                          constraint=constraints[0]))  # warm
    rows = []
    for repeat in range(args.repeats):
        for temperature in (float(t) for t in args.temperatures.split(",")):
            for i, (prompt, constraint) in enumerate(zip(prompts, constraints, strict=True)):
                params = SamplingParams(temperature=temperature, seed=1000 * repeat + i,
                                        max_new_tokens=args.max_new_tokens,
                                        constraint=constraint)
                for name, decoder in decoders.items():
                    start = time.perf_counter()
                    out = decoder.generate(prompt, params)
                    wall = time.perf_counter() - start
                    try:
                        jsonschema.validate(json.loads(out.text), requests[i]["schema"])
                        valid = True
                    except (ValueError, jsonschema.ValidationError):
                        valid = False
                    stats = out.stats
                    rows.append({"repeat": repeat, "temperature": temperature, "request": i,
                                 "method": name, "tokens": len(out.tokens), "wall_s": wall,
                                 "valid": valid, "finish_reason": out.finish_reason,
                                 "forced": stats.forced_tokens, "grammar_s": stats.grammar_s,
                                 "target_s": stats.target_s, "steps": stats.target_calls})
                    print(json.dumps(rows[-1]), flush=True)
    report = summarize(rows, list(decoders))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "json_workload.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                           indent=1))
    (out_dir / "json_workload.md").write_text(report)
    print(report)
    return 0


class LlamaCppGrammar:
    """llama.cpp constrained by its own grammar for the request's schema; `generate` answers
    like SpeculativeDecoder.generate for what this script reads."""

    def __init__(self, target: str, threads: int, tokenizer) -> None:
        from llama_cpp import Llama

        from specdec.models.fetch import ensure_model

        self.llm = Llama(model_path=str(ensure_model(target)), n_ctx=4096, n_threads=threads,
                         n_threads_batch=threads, verbose=False, seed=0)
        self.tokenizer = tokenizer

    def generate(self, prompt: list[int], params: SamplingParams):
        from types import SimpleNamespace

        from llama_cpp import LlamaGrammar

        grammar = LlamaGrammar.from_json_schema(params.constraint.source,
                                                verbose=False)
        self.llm.reset()
        if params.seed is not None:
            self.llm.set_seed(params.seed)
        tokens: list[int] = []
        finish = "length"
        for token in self.llm.generate(prompt, temp=params.temperature, top_k=0, top_p=1.0,
                                       min_p=0.0, repeat_penalty=1.0, grammar=grammar):
            if token == self.llm.token_eos():
                finish = "stop"
                break
            tokens.append(int(token))
            if len(tokens) >= params.max_new_tokens:
                break
        stats = SimpleNamespace(forced_tokens=0, grammar_s=0.0, target_s=0.0, target_calls=0)
        return SimpleNamespace(tokens=tokens, text=self.tokenizer.decode(tokens), stats=stats,
                               finish_reason=finish)


def summarize(rows: list[dict], methods: list[str]) -> str:
    lines = ["| T | method | tokens/s | speedup vs plain | valid | forced / token | "
             "grammar ms / token | target ms / step |", "|---|---|---|---|---|---|---|---|"]
    for temperature in sorted({r["temperature"] for r in rows}):
        base = None
        for method in methods:
            mine = [r for r in rows if r["method"] == method and r["temperature"] == temperature]
            tokens = sum(r["tokens"] for r in mine)
            rate = tokens / sum(r["wall_s"] for r in mine)
            base = rate if method == "plain" else base
            steps = sum(r["steps"] for r in mine)
            lines.append(
                f"| {temperature:g} | {method} | {rate:.1f} | {rate / base:.2f}x | "
                f"{statistics.mean(r['valid'] for r in mine):.0%} | "
                f"{sum(r['forced'] for r in mine) / max(tokens, 1):.2f} | "
                f"{1e3 * sum(r['grammar_s'] for r in mine) / max(tokens, 1):.2f} | "
                f"{1e3 * sum(r['target_s'] for r in mine) / max(steps, 1):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
