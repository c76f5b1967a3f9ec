"""Load benchmark for a running `specdec serve`: concurrent streaming clients.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 8 --rounds 2 \
        --max-tokens 32

Each client sends `rounds` streaming completions one after another (distinct prompts).
Reports requests, errors, tokens/s over the wall time, and p50/p95 time to first token
and total latency, as text and optionally JSON.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import httpx
import openai

TOPICS = ["a binary search", "a linked list", "quicksort", "a web server", "JSON parsing",
          "a hash map", "matrix multiplication", "a priority queue", "string reversal",
          "a unit test", "file reading", "a REST client"]


@dataclass
class Outcome:
    ok: bool
    tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    error: str = ""


def one_request(client: openai.OpenAI, model: str, prompt: str, args) -> Outcome:
    start = time.perf_counter()
    first, tokens = None, 0
    try:
        stream = client.completions.create(model=model, prompt=prompt, stream=True,
                                           max_tokens=args.max_tokens,
                                           temperature=args.temperature,
                                           extra_body={"ignore_eos": args.ignore_eos})
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
    except openai.OpenAIError as error:
        return Outcome(False, error=f"{type(error).__name__}: {error}")
    total = time.perf_counter() - start
    return Outcome(True, tokens, total if first is None else first, total)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run(args) -> dict:
    client = openai.OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key="unused",
                           max_retries=0, timeout=args.timeout)
    model = args.model or client.models.list().data[0].id

    def client_loop(index: int) -> list[Outcome]:
        return [one_request(client, model, f"# Client {index}, round {r}: write "
                            f"{TOPICS[(index + r) % len(TOPICS)]} in Python.\n", args)
                for r in range(args.rounds)]

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        outcomes = [o for batch in pool.map(client_loop, range(args.clients)) for o in batch]
    wall = time.perf_counter() - start
    good = [o for o in outcomes if o.ok]
    tokens = sum(o.tokens for o in good)
    return {
        "model": model, "clients": args.clients, "rounds": args.rounds,
        "max_tokens": args.max_tokens, "temperature": args.temperature,
        "requests": len(outcomes), "errors": len(outcomes) - len(good),
        "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall else 0.0,
        "ttft_p50_s": percentile([o.ttft_s for o in good], 50),
        "ttft_p95_s": percentile([o.ttft_s for o in good], 95),
        "latency_p50_s": percentile([o.total_s for o in good], 50),
        "latency_p95_s": percentile([o.total_s for o in good], 95),
        "first_errors": [asdict(o)["error"] for o in outcomes if not o.ok][:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="model id (default: the served one)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--ignore-eos", action="store_true", help="always generate max-tokens")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 1024 and 1 <= args.rounds <= 1000):
        parser.error("--clients must be in [1, 1024] and --rounds in [1, 1000]")
    summary = run(args)
    for key, value in summary.items():
        print(f"{key:>15}: {value:.3f}" if isinstance(value, float) else f"{key:>15}: {value}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)
    return 0 if summary["errors"] == 0 else 1


def start_server(serve_args: list[str], log, timeout: float) -> tuple[subprocess.Popen, str]:
    """`specdec serve SERVE_ARGS` on a free loopback port, its output written to `log` (an
    open file); returns the process and its URL once /health answers, or raises (killed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-c", "import sys; from specdec.cli import main; sys.exit(main())",
               "serve", *serve_args, "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"server not healthy after {timeout:g} s")


if __name__ == "__main__":
    sys.exit(main())
