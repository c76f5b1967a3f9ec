"""Quality of the low-bit runner and of llama.cpp on the same GGUF, against the bf16 model.

Both read the GGUF's quantized weights; they differ in how they compute with them (int8
activations per 32 inputs here, llama.cpp's own per-format kernels). Teacher-forced over a
shipped text, in chunks of `--chunk` tokens (each chunk its own context):

- greedy agreement: the fraction of positions whose argmax equals the bf16 model's;
- perplexity of the text's next tokens, for each model (bf16 included).

The text: Spec-Bench questions (Apache-2.0, shipped with the package; the last two of each
category, which `specdec bench --per-category 3` does not run) and CPython's textwrap.py
(PSF-2.0, from the running interpreter). Run:

    python benchmarks/low_bit/quality.py --out benchmarks/low_bit
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from specdec.bench.workloads import load_questions
from specdec.models import load_model
from specdec.models.fetch import ensure_model

TARGET = "qwen2.5-coder-0.5b"


def shipped_text() -> str:
    """Two Spec-Bench questions per category (the file's last ones) and textwrap.py."""
    by_category: dict[str, list[str]] = defaultdict(list)
    for question in load_questions("spec-bench"):
        by_category[question.category].append(question.text)
    prose = [text for texts in by_category.values() for text in texts[-2:]]
    return "\n\n".join(prose) + "\n\n" + inspect.getsource(textwrap)


def chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids) - 1, size) if len(ids[i:i + size]) > 1]


def ours(model, chunk: list[int]) -> np.ndarray:
    """Logits at every position of `chunk` (predicting the next token), [n, V] float32."""
    ids = torch.tensor([chunk])
    model.prefill(ids[:, :1])
    return model.extend(ids)[0].numpy()


def llamacpp(llm, chunk: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(chunk)
    return np.array(llm.scores[:len(chunk)], dtype=np.float32)


def nll(logits: np.ndarray, targets: list[int]) -> float:
    """Summed negative log-likelihood of targets[i] under logits[i]."""
    logits = logits.astype(np.float64)
    peak = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - peak).sum(-1)) + peak[:, 0]
    return float((log_z - logits[np.arange(len(targets)), targets]).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=6144, help="tokens of text used")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/low_bit"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from llama_cpp import Llama

    full = load_model(TARGET, dtype="bfloat16")
    low = load_model(TARGET, dtype="gguf")
    llm = Llama(model_path=str(ensure_model(TARGET)), n_ctx=args.chunk, n_batch=args.chunk,
                n_threads=args.threads, logits_all=True, verbose=False)
    ids = full.tokenizer(shipped_text())["input_ids"][:args.max_tokens]
    runs = {"bf16": lambda c: ours(full, c), "specdec low-bit": lambda c: ours(low, c),
            "llama.cpp": lambda c: llamacpp(llm, c)}
    totals = {name: 0.0 for name in runs}
    agree = {name: 0 for name in runs}
    positions, start = 0, time.perf_counter()
    for chunk in chunks(ids, args.chunk):
        targets = chunk[1:]
        logits = {name: run(chunk)[:-1] for name, run in runs.items()}
        reference = logits["bf16"].argmax(-1)
        for name, values in logits.items():
            totals[name] += nll(values, targets)
            agree[name] += int((values.argmax(-1) == reference).sum())
        positions += len(targets)
    result = {"target": TARGET, "tokens": positions, "chunk": args.chunk,
              "threads": args.threads, "seconds": time.perf_counter() - start,
              "machine": platform.processor() or platform.machine(),
              "perplexity": {n: math.exp(t / positions) for n, t in totals.items()},
              "greedy_agreement_with_bf16": {n: a / positions for n, a in agree.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(result, indent=2))
    lines = ["# Quality: the low-bit runner and llama.cpp against bf16, same GGUF", "",
             f"`python benchmarks/low_bit/quality.py` — {positions} teacher-forced positions "
             f"of shipped text (Spec-Bench questions and CPython's textwrap.py) in chunks of "
             f"{args.chunk}, {args.threads} threads.", "",
             "| model | perplexity | greedy agreement with bf16 |", "|---|---|---|"]
    for name in runs:
        lines.append(f"| {name} | {result['perplexity'][name]:.3f} | "
                     f"{result['greedy_agreement_with_bf16'][name]:.4f} |")
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
