"""Server under concurrent streaming clients, by --max-batch-size: one run, one table.

Starts `specdec serve` once per batch size (same model, drafter, threads), runs
benchmarks/serve_load.py's clients against it for each client count (distinct prompts,
greedy, EOS ignored so every request streams --max-tokens tokens), and reports aggregate
tokens/s and time to first token p50/p95.

    python benchmarks/serve_batch.py --target qwen2.5-coder-0.5b --draft ngram \
        --batch-sizes 1,16 --clients 1,4,16,32 --max-tokens 48 --out benchmarks/batch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
import serve_load  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--draft", default="ngram")
    parser.add_argument("--gamma", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--clients", default="1,4,16,32")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", default="benchmarks/batch")
    parser.add_argument("--extra", default="", help="more `specdec serve` options")
    return parser.parse_args()


def start(args: argparse.Namespace, batch: int) -> tuple[subprocess.Popen, str]:
    log = open(Path(args.out) / f"serve_{batch}.log", "w")  # noqa: SIM115 (the server's life)
    return serve_load.start_server(
        ["--target", args.target, "--draft", args.draft, "--gamma", args.gamma,
         "--threads", str(args.threads), "--device", args.device, "--max-batch-size", str(batch),
         "--max-queue", "256", *args.extra.split()], log, timeout=600)


def main() -> int:
    args = parse()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    load_before = os.getloadavg()
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        process, url = start(args, batch)
        try:
            # one request first: the first forward of a fresh process is slower
            serve_load.run(SimpleNamespace(url=url, model=None, clients=1, rounds=1,
                                           max_tokens=4, temperature=0.0, ignore_eos=True,
                                           timeout=600.0))
            for clients in [int(c) for c in args.clients.split(",")]:
                summary = serve_load.run(SimpleNamespace(
                    url=url, model=None, clients=clients, rounds=1, max_tokens=args.max_tokens,
                    temperature=0.0, ignore_eos=True, timeout=1800.0))
                summary["max_batch_size"] = batch
                summary["load"] = os.getloadavg()
                rows.append(summary)
                print(f"batch {batch:>2} clients {clients:>2}: "
                      f"{summary['tokens_per_s']:6.2f} tok/s, TTFT p50 "
                      f"{summary['ttft_p50_s']:.2f}s p95 {summary['ttft_p95_s']:.2f}s, "
                      f"errors {summary['errors']}", file=sys.stderr, flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    report = {"target": args.target, "draft": args.draft, "gamma": args.gamma,
              "threads": args.threads, "device": args.device, "max_tokens": args.max_tokens,
              "load_before": load_before, "load_after": os.getloadavg(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "serve.md").write_text(text)
    print(text)
    return 0


def markdown(report: dict) -> str:
    lines = [f"# Server under load: {report['target']}, --draft {report['draft']} --gamma "
             f"{report['gamma']}, {report['device']}, {report['threads']} threads", "",
             f"Each client streams one completion of {report['max_tokens']} tokens (greedy, "
             "EOS ignored), all clients at once. Load average before "
             f"{report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f}.", "",
             "| max batch | clients | agg tok/s | x 1 client | TTFT p50 s | TTFT p95 s | "
             "p95 x 1 client | errors |", "|---|---|---|---|---|---|---|---|"]
    base: dict[int, dict] = {}
    for row in report["rows"]:
        one = base.setdefault(row["max_batch_size"], row)
        lines.append(
            f"| {row['max_batch_size']} | {row['clients']} | {row['tokens_per_s']:.2f} | "
            f"{row['tokens_per_s'] / one['tokens_per_s']:.2f} | {row['ttft_p50_s']:.2f} | "
            f"{row['ttft_p95_s']:.2f} | {row['ttft_p95_s'] / one['ttft_p95_s']:.2f} | "
            f"{row['errors']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
