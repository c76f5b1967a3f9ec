"""Replicas against batching: aggregate tok/s and TTFT of `specdec serve` set up three ways.

    python benchmarks/replicas/measure.py --target qwen2.5-coder-0.5b --draft ngram \
        --clients 8,16 --max-tokens 64 --out benchmarks/replicas

Setups (each started fresh, warmed up, then loaded by benchmarks/serve_load.py's streaming
clients, distinct prompts, greedy, EOS ignored so every request streams --max-tokens tokens):
  batching-2t    one process, --threads 2, continuous batching (--max-batch-size 16)
  replicas-1x1t  --replicas 1, one thread (Ray Serve's proxy hop, one engine)
  replicas-2x1t  --replicas 2, one thread each (two engines, each batching its share)
Writes replicas.json and replicas.md (a table) to --out. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import serve_load  # noqa: E402

SETUPS = {
    "batching-2t": ["--threads", "2"],
    "replicas-1x1t": ["--threads", "1", "--replicas", "1", "--replica-cpus", "1"],
    "replicas-2x1t": ["--threads", "1", "--replicas", "2", "--replica-cpus", "1"],
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--draft", default="ngram")
    parser.add_argument("--gamma", default="auto")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--clients", default="8,16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/replicas")
    parser.add_argument("--extra", default="", help="more `specdec serve` options, all setups")
    return parser.parse_args()


def start(args: argparse.Namespace, name: str) -> tuple[subprocess.Popen, str]:
    log = open(Path(args.out) / f"serve_{name}.log", "w")  # noqa: SIM115 (the server's life)
    try:
        return serve_load.start_server(
            ["--target", args.target, "--draft", args.draft, "--gamma", args.gamma,
             "--max-batch-size", str(args.max_batch_size), "--max-queue", "256",
             *SETUPS[name], *args.extra.split()], log, timeout=900)
    except (RuntimeError, TimeoutError) as error:
        raise type(error)(f"{name}: {error}") from None


def warm_up(url: str) -> None:
    """A few short requests at once, so that every replica has run its first forward."""
    serve_load.run(SimpleNamespace(url=url, model=None, clients=4, rounds=2, max_tokens=4,
                                   temperature=0.0, ignore_eos=True, timeout=600.0))


def main() -> int:
    args = parse()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    load_before = os.getloadavg()
    for name in args.setups.split(","):
        process, url = start(args, name)
        try:
            warm_up(url)
            for clients in [int(c) for c in args.clients.split(",")]:
                summary = serve_load.run(SimpleNamespace(
                    url=url, model=None, clients=clients, rounds=1, max_tokens=args.max_tokens,
                    temperature=0.0, ignore_eos=True, timeout=1800.0))
                summary.update(setup=name, load=os.getloadavg())
                rows.append(summary)
                print(f"{name:>14} clients {clients:>2}: {summary['tokens_per_s']:6.2f} tok/s, "
                      f"TTFT p50 {summary['ttft_p50_s']:.2f}s p95 {summary['ttft_p95_s']:.2f}s, "
                      f"errors {summary['errors']}", file=sys.stderr, flush=True)
        finally:
            process.send_signal(signal.SIGTERM)  # replicas: drain, stop the local cluster
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
    report = {"target": args.target, "draft": args.draft, "gamma": args.gamma,
              "max_tokens": args.max_tokens, "max_batch_size": args.max_batch_size,
              "cores": os.cpu_count(), "load_before": load_before,
              "load_after": os.getloadavg(), "rows": rows}
    (out / "replicas.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "replicas.md").write_text(text)
    print(text)
    return 0


def markdown(report: dict) -> str:
    lines = [f"# Replicas vs batching: {report['target']}, --draft {report['draft']}, "
             f"{report['cores']} cores", "",
             f"Each client streams one completion of {report['max_tokens']} tokens (greedy, "
             "EOS ignored), all clients at once. Load average before "
             f"{report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f}.", "",
             "| setup | clients | agg tok/s | TTFT p50 s | TTFT p95 s | errors |",
             "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['setup']} | {row['clients']} | {row['tokens_per_s']:.2f} | "
                     f"{row['ttft_p50_s']:.2f} | {row['ttft_p95_s']:.2f} | {row['errors']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
