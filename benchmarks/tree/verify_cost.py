"""What one target forward over a tree of N nodes costs, against a line of N and one token.

    python benchmarks/tree/verify_cost.py [--target qwen2.5-coder-0.5b] [--threads 2]
        [--dtype bfloat16] [--context 512] [--repeats 15]

For N in 1, 2, 4, 8, 12, 16, 24, 32: the median time of `extend` over a line of N tokens and of
`extend_tree` over a bushy random tree of N nodes (depth <= 6; each node's attention gathers
its own tail of keys: runtime/tree_attention.py), both after a `--context`-token prompt, as a
ratio to one-token `extend`: v_line(N) and v_tree(N). The budget controller's cost curve is
v_tree; on the CPU a tree costs more than a line of the same width only by its attention.
Prints one JSON object (and a table to stderr).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from specdec.models.loading import load_model

WIDTHS = (1, 2, 4, 8, 12, 16, 24, 32)


def bushy(n: int, depth: int = 6, seed: int = 0) -> list[int]:
    """Parents of a random tree of n nodes (node 0 the root) no deeper than `depth`."""
    generator = torch.Generator().manual_seed(seed)
    parents, levels = [-1], [0]
    for _ in range(n - 1):
        choices = [i for i, level in enumerate(levels) if level < depth]
        parent = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        parents.append(parent)
        levels.append(levels[parent] + 1)
    return parents


def median_ms(call, undo, repeats: int) -> float:
    call()
    undo()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        undo()
    return 1e3 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    model = load_model(args.target, dtype=args.dtype, threads=args.threads)
    if not model.verifies_trees:
        print(f"{model.name} does not verify trees (static runner needed)", file=sys.stderr)
        return 1
    generator = torch.Generator().manual_seed(0)
    model.prefill(torch.randint(0, 30_000, (1, args.context), generator=generator),
                  reserve=64)
    one = median_ms(lambda: model.extend(torch.tensor([[5]])), lambda: model.rollback(1),
                    args.repeats)
    rows = []
    for n in WIDTHS:
        tokens = torch.randint(0, 30_000, (1, n), generator=generator)
        parents = bushy(n)
        line = median_ms(lambda t=tokens: model.extend(t), lambda k=n: model.rollback(k),
                         args.repeats)
        tree = median_ms(lambda t=tokens, p=parents: model.extend_tree(t, p),
                         lambda k=n: model.rollback(k), args.repeats)
        rows.append({"nodes": n, "line_ms": line, "tree_ms": tree, "v_line": line / one,
                     "v_tree": tree / one})
        print(f"N={n:3d}  line {line:7.1f} ms (v {line / one:4.2f})  "
              f"tree {tree:7.1f} ms (v {tree / one:4.2f})", file=sys.stderr)
    print(json.dumps({"target": model.name, "dtype": args.dtype, "threads": args.threads,
                      "context": args.context, "one_token_ms": one, "rows": rows,
                      "machine": platform.processor() or platform.machine()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
