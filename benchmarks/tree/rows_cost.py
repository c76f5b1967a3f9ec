"""What one batched forward over R rows of trees costs, against R rows of lines.

    python benchmarks/tree/rows_cost.py [--target qwen2.5-coder-0.5b] [--threads 2]
        [--dtype float32] [--context 512] [--nodes 8] [--repeats 7]

For R in 1, 2, 4, 8, 16: the median time of `StaticRows.extend` over R lines of --nodes
tokens and of `StaticRows.extend_tree` over R bushy trees of --nodes nodes (each row its own
tree; the tree attention runs row by row: runtime/tree_attention.py, tree_rows_attention),
after prompts of about --context tokens (ragged by a few tokens), as a ratio to one row's
one-token extend. Shows what batched tree verification costs per row and whether the
row-by-row attention matters next to the shared projections. Prints one JSON object (and a
table to stderr).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch
from verify_cost import bushy, median_ms

from specdec.models.loading import load_model
from specdec.runtime.rows import StaticRows

ROWS = (1, 2, 4, 8, 16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model = load_model(args.target, dtype=args.dtype, threads=args.threads)
    if not model.verifies_trees:
        print(f"{model.name} does not verify trees (static runner needed)", file=sys.stderr)
        return 1
    generator = torch.Generator().manual_seed(0)
    n = args.nodes
    results = []
    one = None
    for count in ROWS:
        rows = StaticRows(model, max_rows=count)  # type: ignore[arg-type]
        for r in range(count):
            length = args.context + 3 * r  # ragged, as a batch's rows are
            rows.add(torch.randint(0, 30_000, (1, length), generator=generator), reserve=64)
        if one is None:
            one = median_ms(lambda rs=rows: rs.extend(torch.tensor([[5]])),
                            lambda rs=rows: rs.rollback([1]), args.repeats)
        tokens = torch.randint(0, 30_000, (count, n), generator=generator)
        parents = [bushy(n, seed=r) for r in range(count)]
        line = median_ms(lambda rs=rows, t=tokens: rs.extend(t),
                         lambda rs=rows, c=count: rs.rollback([n] * c), args.repeats)
        tree = median_ms(lambda rs=rows, t=tokens, p=parents: rs.extend_tree(t, p),
                         lambda rs=rows, c=count: rs.rollback([n] * c), args.repeats)
        results.append({"rows": count, "line_ms": line, "tree_ms": tree,
                        "v_line": line / one, "v_tree": tree / one})
        print(f"R={count:3d}  lines {line:8.1f} ms (v {line / one:5.2f})  "
              f"trees {tree:8.1f} ms (v {tree / one:5.2f})", file=sys.stderr)
    print(json.dumps({"target": model.name, "dtype": args.dtype, "threads": args.threads,
                      "context": args.context, "nodes": n, "one_token_ms": one,
                      "rows": results,
                      "machine": platform.processor() or platform.machine()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
