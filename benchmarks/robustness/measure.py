"""Measurements of issue 20 on a real model: a joining long prompt's stall, and the KV cache
budget under load. Each starts `specdec serve` itself (one at a time: run it on an idle machine).

    python benchmarks/robustness/measure.py gap --target qwen2.5-coder-0.5b --repeats 3
    python benchmarks/robustness/measure.py memory --target qwen2.5-coder-0.5b \
        --kv-cache-memory 1GiB --clients 32

gap: one client streams greedy tokens; after 2 s a second client sends a ~4,000-token prompt.
The streaming client's inter-token gaps (time between SSE chunks) are recorded, with the
prompt prefilled at once (--prefill-chunk 65536: how the server behaved before) and in pieces
(the default), servers alternating per repeat. Reports p50, p99 and max gap per setting.

memory: N clients ask for the largest max_tokens the server allows, streaming; the server's
RSS is sampled (and its peak, VmHWM, read) for --seconds, then the clients go. Reports the
RSS before load, the peak, the budget, and whether /health still answers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import serve_load  # noqa: E402

CODE = "def f{i}(x):\n    return [y * {i} for y in range(x) if y % 3 == {m}]\n\n"


@contextmanager
def server(target: str, threads: int, *extra: str):
    """`specdec serve` of `target` for the block; its output shown if it does not start."""
    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            process, url = serve_load.start_server(
                ["--target", target, "--threads", str(threads), *extra], log, timeout=300)
        except (RuntimeError, TimeoutError) as error:
            log.seek(0)
            raise RuntimeError(f"the server did not start ({error}): {log.read()[-2000:]}") \
                from None
        try:
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(timeout=60)


def stream_times(url: str, body: dict, times: list[float]) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                times.append(time.perf_counter())


def long_prompt(tokens: int) -> str:
    """About `tokens` tokens of Python (a code tokenizer: ~20 tokens a function)."""
    return "".join(CODE.format(i=i, m=i % 3) for i in range(tokens // 20))


def gap_once(url: str, prompt_tokens: int) -> dict:
    times: list[float] = []
    streamer = threading.Thread(target=stream_times, args=(url, {
        "prompt": "def quicksort(arr):", "max_tokens": 160, "temperature": 0,
        "ignore_eos": True}, times))
    streamer.start()
    time.sleep(2.0)
    joined = time.perf_counter()
    response = httpx.post(f"{url}/v1/completions", json={
        "prompt": long_prompt(prompt_tokens), "max_tokens": 4, "temperature": 0}, timeout=600)
    prompt_len = response.json()["usage"]["prompt_tokens"]
    streamer.join()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    during = [b - a for a, b in zip(times, times[1:], strict=False) if b > joined]
    return {"gaps": gaps, "during": during, "prompt_tokens": prompt_len}


def summary(gaps: list[float]) -> dict:
    ordered = sorted(gaps)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"n": len(gaps), "p50_ms": 1000 * statistics.median(gaps), "p99_ms": 1000 * p99,
            "max_ms": 1000 * ordered[-1]}


def measure_gap(args) -> dict:
    settings = {"at once (--prefill-chunk 65536)": "65536",
                f"in pieces (--prefill-chunk {args.chunk})": str(args.chunk)}
    gaps: dict[str, list[float]] = {name: [] for name in settings}
    prompts = []
    for repeat in range(args.repeats):
        for name, chunk in settings.items():
            with server(args.target, args.threads, "--prefill-chunk", chunk) as (url, _):
                result = gap_once(url, args.prompt_tokens)
            gaps[name] += result["gaps"]
            prompts.append(result["prompt_tokens"])
            print(f"repeat {repeat} {name}: {summary(result['gaps'])}", flush=True)
    return {"prompt_tokens": prompts, "threads": args.threads,
            "results": {name: summary(g) for name, g in gaps.items()}}


def rss(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def measure_memory(args) -> dict:
    with server(args.target, args.threads, "--kv-cache-memory", args.kv_cache_memory) as (
            url, pid):
        before = rss(pid)
        limit = args.max_tokens
        statuses: list[int] = []

        def client(i: int) -> None:
            try:
                with httpx.stream("POST", f"{url}/v1/completions", json={
                        "prompt": f"# task {i}\ndef solve():", "max_tokens": limit,
                        "temperature": 0, "ignore_eos": True, "stream": True},
                        timeout=args.seconds + 30) as response:
                    statuses.append(response.status_code)
                    for _ in response.iter_lines():
                        pass
            except httpx.HTTPError:
                pass  # cut off at the end of the window

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()
        samples = []
        end = time.time() + args.seconds
        while time.time() < end:
            samples.append(rss(pid)["VmRSS"])
            time.sleep(0.5)
        health = httpx.get(f"{url}/health", timeout=10).status_code
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        peak = rss(pid)["VmHWM"]
    running = [line for line in metrics.splitlines() if line.startswith("specdec_requests_total")]
    return {"budget": args.kv_cache_memory, "clients": args.clients, "max_tokens": limit,
            "rss_before_mib": before["VmRSS"] / 2**20, "rss_peak_mib": peak / 2**20,
            "rss_max_sampled_mib": max(samples) / 2**20, "health_after": health,
            "statuses": sorted(statuses), "request_metrics": running}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    gap = sub.add_parser("gap")
    gap.add_argument("--prompt-tokens", type=int, default=4000)
    gap.add_argument("--chunk", type=int, default=128)
    gap.add_argument("--repeats", type=int, default=3)
    memory = sub.add_parser("memory")
    memory.add_argument("--kv-cache-memory", default="1GiB")
    memory.add_argument("--clients", type=int, default=32)
    memory.add_argument("--max-tokens", type=int, default=4096)
    memory.add_argument("--seconds", type=float, default=60)
    for each in (gap, memory):
        each.add_argument("--target", default="qwen2.5-coder-0.5b")
        each.add_argument("--threads", type=int, default=2)
        each.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = measure_gap(args) if args.what == "gap" else measure_memory(args)
    result["machine"] = {"cores": os.cpu_count(), "load_before": os.getloadavg()}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
