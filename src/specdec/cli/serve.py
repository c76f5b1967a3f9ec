"""`specdec serve`: an OpenAI-compatible HTTP server (loopback by default)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from specdec.cli.loading import MAX_THREADS, load_decoder, model_options
from specdec.cli.options import (
    DTYPE_CHOICES,
    DTYPE_HELP,
    RuntimeOptions,
    add_model_arguments,
    add_runtime_arguments,
    runtime_options,
)
from specdec.cli.serve_replicas import add_replica_arguments, check_replica_arguments
from specdec.server.app import DEFAULT_MAX_BODY
from specdec.server.engine import DEFAULT_MAX_BATCH_SIZE, DEFAULT_PREFILL_CHUNK
from specdec.server.kv_budget import DEFAULT_KV_CACHE_MEMORY, parse_budget

MAX_QUEUE_LIMIT = 100_000
MAX_BATCH_LIMIT = 256  # rows of KV cache held at once
MAX_TOKENS_CEILING = 1 << 20
MAX_BODY_CEILING = 64 << 20
MAX_PREFILL_CHUNK = 1 << 16
DEFAULT_GRACE = 3.0
MAX_GRACE = 3600.0
API_KEY_ENV = "SPECDEC_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec serve", description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help=DTYPE_HELP + "; float32 rather than bf16 when batching without "
                        "prepacked bf16 (docs/server.md)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's, the physical cores, at most "
                        "the cores this process may use)")
    add_runtime_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--served-model-name", default=None,
                        help="model id clients use (default: --target)")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="requests decoded together, one target forward per step; "
                        f"waiting ones join between steps (default {DEFAULT_MAX_BATCH_SIZE}; "
                        "1 on runners that cannot batch)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests that may wait; more get HTTP 429 (default 64)")
    parser.add_argument("--max-tokens-limit", type=int, default=4096,
                        help="largest max_tokens a request may ask for (default 4096)")
    parser.add_argument("--kv-cache-memory", default=DEFAULT_KV_CACHE_MEMORY,
                        help="memory for the KV cache of all requests together: a size "
                        "(8GiB, 512MB) or a fraction of the memory available after loading "
                        "the models (default 0.5). A request is admitted when its worst case "
                        "(prompt + max_tokens + drafts) fits; one that never can gets HTTP 400")
    parser.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                        help="prompt tokens prefilled between two decoding steps while other "
                        "requests stream: a long prompt joins over several steps instead of "
                        f"stalling them (default {DEFAULT_PREFILL_CHUNK})")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY,
                        help="largest request body in bytes; more get HTTP 413 "
                        f"(default {DEFAULT_MAX_BODY})")
    parser.add_argument("--shutdown-grace", type=float, default=DEFAULT_GRACE,
                        help="on Ctrl-C / SIGTERM: seconds the running generation may take "
                        "to finish before it is stopped; waiting requests are refused at once "
                        f"(default {DEFAULT_GRACE:g})")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                        help="require 'Authorization: Bearer KEY' on every path but /health "
                        f"(default: ${API_KEY_ENV}, else no key; the variable keeps the key "
                        "out of the process list)")
    parser.add_argument("--public-metrics", action="store_true",
                        help="serve /metrics without the API key (for a Prometheus scraper)")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))
    add_replica_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_bounds(parser, args)
    check_replica_arguments(parser, args)

    if args.replicas is not None:  # Ray Serve replicas (specdec.cli.serve_replicas)
        from specdec.cli.serve_replicas import run_replicas

        return run_replicas(args)
    from specdec.server.lifecycle import serve

    engine, app = build_server(args)
    if args.api_key is None and args.host not in LOOPBACK:
        print(f"specdec serve: warning: listening on {args.host} without --api-key: anyone who "
              "can reach this port can use the model", file=sys.stderr)
    serve(app, engine, args.host, args.port, args.log_level, args.shutdown_grace)
    # every response is finished and the worker has ended: skip the interpreter's teardown of
    # the loaded model (seconds: every tensor freed one by one), which would make a stopped
    # server linger
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def build_server(args: argparse.Namespace, metrics: Any = None) -> tuple[Any, Any]:
    """Load the models `args` name; their Engine (with `metrics`, if given) and its app.

    The same for one process and for each Ray Serve replica.
    """
    import torch

    from specdec.runtime.linear import onednn_packing_available
    from specdec.runtime.low_bit_choice import low_bit_verdict
    from specdec.server import Engine, EngineConfig, create_app

    options = model_options(args)  # fail on a bad value before loading anything
    runtime, note = serve_runtime(runtime_options(args), args.max_batch_size)
    if note and args.compile:  # said only to who asked for --compile
        print(f"specdec serve: {note}", file=sys.stderr)
    dtype = serve_dtype(args.dtype, runtime.device.type, args.max_batch_size,
                        onednn_packing_available(torch.bfloat16, torch.device("cpu")),
                        runtime.device.type == "cpu" and low_bit_verdict().faster)
    decoder = load_decoder(dataclasses.replace(options, dtype=dtype), runtime)
    if runtime.compile:  # compile before the first request, not during it
        seconds = warm_up(decoder.target, decoder.drafter, args.max_tokens_limit)
        print(f"specdec serve: compiled steps in {seconds:.1f}s", file=sys.stderr)
    budget = parse_budget(args.kv_cache_memory)  # after loading: what the models left
    engine = Engine(decoder,
                    EngineConfig(max_queue=args.max_queue, max_batch_size=args.max_batch_size,
                                 max_tokens_limit=args.max_tokens_limit,
                                 kv_cache_bytes=budget, prefill_chunk=args.prefill_chunk),
                    metrics=metrics)
    app = create_app(engine, args.served_model_name or args.target, args.max_body_bytes,
                     api_key=args.api_key, public_metrics=args.public_metrics)
    return engine, app


def serve_dtype(dtype: str, device: str, max_batch_size: int,
                bf16_packing: str | None, low_bit_faster: bool = False) -> str | None:
    """The weights' dtype; None lets load_model choose (a GGUF's own blocks where they
    measured faster, else bfloat16 where the CPU has it).

    Without AMX, bf16 through F.linear re-lays its weights out on every call, a cost paid
    again for every row of a batch, so a batch costs nearly its rows' single steps; float32
    and prepacked bf16 weights are laid out once and a batch costs little more than a row.
    So a batching CPU server keeps bf16 where it can prepack it, float32 elsewhere.
    bf16_packing: why bf16 cannot be prepacked on the CPU it runs on (None: it can).
    """
    if dtype != "auto":
        return dtype
    if device != "cpu" or max_batch_size == 1 or low_bit_faster:
        return None
    return None if bf16_packing is None else "float32"


def serve_runtime(runtime: RuntimeOptions,
                  max_batch_size: int) -> tuple[RuntimeOptions, str | None]:
    """The runtime to load with, and why it differs from the one asked for (None: it does not).

    Compiled steps are single-row; batched rows run eagerly (docs/gpu.md). A batching server
    would compile widths it never calls and hold a single-row cache it never uses, so it
    compiles nothing."""
    if not runtime.compile or max_batch_size == 1:
        return runtime, None
    return dataclasses.replace(runtime, compile=False), \
        "--compile: batched rows run eagerly (compiled steps are single-row); " \
        "nothing is compiled unless --max-batch-size 1"


def warm_up(target: Any, drafter: Any, max_tokens: int) -> float:
    """Compile every width of the target and of a model drafter; returns the seconds taken.

    The cache is sized for a long request, so later requests rarely regrow it (which would
    recompile); compiled steps attend over the whole buffer, which a GPU does not notice.
    """
    window = target.max_length or max_tokens + 2048
    capacity = min(window, max_tokens + 2048)
    return target.warmup(capacity) + (drafter.warmup(capacity) if drafter is not None else 0.0)


def _check_bounds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in [0, 65535], got {args.port}")
    if not 0 <= args.max_queue <= MAX_QUEUE_LIMIT:
        parser.error(f"--max-queue must be in [0, {MAX_QUEUE_LIMIT}], got {args.max_queue}")
    if not 1 <= args.max_batch_size <= MAX_BATCH_LIMIT:
        parser.error(f"--max-batch-size must be in [1, {MAX_BATCH_LIMIT}], "
                     f"got {args.max_batch_size}")
    if not 1 <= args.max_tokens_limit <= MAX_TOKENS_CEILING:
        parser.error(f"--max-tokens-limit must be in [1, {MAX_TOKENS_CEILING}]")
    try:
        parse_budget(args.kv_cache_memory)
    except ValueError as error:
        parser.error(f"--kv-cache-memory: {error}")
    if not 1 <= args.prefill_chunk <= MAX_PREFILL_CHUNK:
        parser.error(f"--prefill-chunk must be in [1, {MAX_PREFILL_CHUNK}], "
                     f"got {args.prefill_chunk}")
    if not 1 <= args.max_body_bytes <= MAX_BODY_CEILING:
        parser.error(f"--max-body-bytes must be in [1, {MAX_BODY_CEILING}]")
    if not 0 <= args.shutdown_grace <= MAX_GRACE:  # also refuses nan
        parser.error(f"--shutdown-grace must be in [0, {MAX_GRACE:g}] seconds")
    if args.api_key is not None and (not args.api_key.strip() or len(args.api_key) > 4096):
        parser.error("--api-key must be 1 to 4096 characters, not only spaces")
    # also checked where the models load (model_options); here before replicas start
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        parser.error(f"--threads must be in [1, {MAX_THREADS}], got {args.threads}")
