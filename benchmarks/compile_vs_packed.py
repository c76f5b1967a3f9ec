"""torch.compile with inductor's freezing against prepacked eager layers, on the CPU, ONE run.

    python benchmarks/compile_vs_packed.py [--threads 2] [--repeats 15]

Three runners over the same Qwen2.5-Coder-0.5B bf16 weights: eager with F.linear (no
packing), eager with prepacked layers (the default), and the static runner's compiled width 1
with `torch._inductor.config.freezing = True` (inductor packs the weights its own way). For
each: load + compile seconds (the first call of width 1) and the median one-token step. Run it
twice: the second process shows what inductor's on-disk caches save on compile time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specdec.models.loading import load_model


def step_ms(model, repeats: int) -> float:
    model.prefill(torch.randint(0, 30_000, (1, 100), generator=torch.Generator().manual_seed(0)),
                  reserve=64)
    token = torch.tensor([[5]])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.extend(token)
        times.append(time.perf_counter() - start)
        model.rollback(1)
    return 1e3 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch._inductor.config.freezing = True
    runners = {"eager, F.linear": dict(pack=False), "eager, prepacked": dict(pack=True),
               "compiled width 1, freezing": dict(compile=True)}
    for name, options in runners.items():
        start = time.perf_counter()
        model = load_model(args.target, dtype="bfloat16", threads=args.threads, **options)
        if options.get("compile"):
            model.widths = (1,)
        step_ms(model, 1)  # first call: compiles width 1 where compiled
        ready = time.perf_counter() - start
        print(f"{name}: load + first step {ready:.1f} s (compile {model.compile_s:.1f} s), "
              f"one-token step {step_ms(model, args.repeats):.1f} ms", flush=True)
        del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
