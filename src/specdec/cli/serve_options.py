"""`specdec serve`'s flags, the replicas' included, and the checks of their values."""

from __future__ import annotations

import argparse
import os
import sys

from specdec.cli.loading import MAX_THREADS
from specdec.cli.options import (
    DTYPE_CHOICES,
    DTYPE_HELP,
    add_model_arguments,
    add_runtime_arguments,
)
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
MAX_REPLICAS = 1024
# each flag's least and greatest value (a flag left unset, None, is not checked)
BOUNDS = (("port", 0, 65535), ("max_queue", 0, MAX_QUEUE_LIMIT),
          ("max_batch_size", 1, MAX_BATCH_LIMIT), ("max_tokens_limit", 1, MAX_TOKENS_CEILING),
          ("prefill_chunk", 1, MAX_PREFILL_CHUNK), ("max_body_bytes", 1, MAX_BODY_CEILING),
          ("shutdown_grace", 0, MAX_GRACE),
          # also checked where the models load (model_options); here before replicas start
          ("threads", 1, MAX_THREADS))
REPLICA_BOUNDS = (("replicas", 1, MAX_REPLICAS), ("max_ongoing_requests", 1, 100_000))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdec serve",
        description="`specdec serve`: an OpenAI-compatible HTTP server (loopback by default).")
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


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (parser.error) a value out of its bounds, before anything loads or starts."""
    _check_bounds(parser, args, BOUNDS)
    try:
        parse_budget(args.kv_cache_memory)
    except ValueError as error:
        parser.error(f"--kv-cache-memory: {error}")
    if args.api_key is not None and (not args.api_key.strip() or len(args.api_key) > 4096):
        parser.error("--api-key must be 1 to 4096 characters, not only spaces")
    check_replica_arguments(parser, args)


def warn_if_open(host: str, api_key: str | None) -> None:
    """Warn when the server listens beyond this machine with no key to keep others out."""
    if api_key is None and host not in LOOPBACK:
        print(f"specdec serve: warning: listening on {host} without --api-key: anyone who "
              "can reach this port can use the model", file=sys.stderr)


def add_replica_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "replicas (Ray Serve; needs pip install 'specdec[cluster]'; see docs/replicas.md)")
    group.add_argument("--replicas", type=int, default=None,
                       help="run N replicas of the server on Ray Serve behind one endpoint "
                       "(default: one process, no Ray); the starting count when autoscaling")
    group.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (e.g. ray://head:10001 or auto); default: "
                       "start a local one that stops with the command")
    group.add_argument("--replica-cpus", type=float, default=1.0,
                       help="Ray CPUs reserved per replica (default 1; --threads defaults to "
                       "it)")
    group.add_argument("--replica-gpus", type=float, default=0.0,
                       help="GPUs per replica; a fraction shares one (default 0)")
    group.add_argument("--max-ongoing-requests", type=int, default=None,
                       help="requests one replica holds, running and waiting (default "
                       "--max-batch-size + --max-queue); more wait in the proxy's queue of "
                       "--max-queue requests, past which they get HTTP 503")
    group.add_argument("--min-replicas", type=int, default=None,
                       help="autoscale between --min-replicas and --max-replicas on load")
    group.add_argument("--max-replicas", type=int, default=None,
                       help="autoscaling's ceiling (with --min-replicas)")
    group.add_argument("--target-ongoing-requests", type=float, default=None,
                       help="autoscaling aims at this many requests per replica (default "
                       "half of --max-ongoing-requests)")


def check_replica_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    scaling = (args.min_replicas, args.max_replicas)
    if args.replicas is None:
        used = [flag for flag, value in (
            ("--ray-address", args.ray_address), ("--max-ongoing-requests",
                                                  args.max_ongoing_requests),
            ("--min-replicas", args.min_replicas), ("--max-replicas", args.max_replicas),
            ("--target-ongoing-requests", args.target_ongoing_requests)) if value is not None]
        if used:
            parser.error(f"{', '.join(used)} need --replicas")
        return
    _check_bounds(parser, args, REPLICA_BOUNDS)
    if not 0 < args.replica_cpus <= 1024 or not 0 <= args.replica_gpus <= 1024:
        parser.error("--replica-cpus must be > 0 and --replica-gpus >= 0")
    if (scaling[0] is None) != (scaling[1] is None):
        parser.error("autoscaling needs both --min-replicas and --max-replicas")
    if scaling[0] is not None and not 0 <= scaling[0] <= scaling[1] <= MAX_REPLICAS:
        parser.error(f"need 0 <= --min-replicas <= --max-replicas <= {MAX_REPLICAS}")


def _check_bounds(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  bounds: tuple[tuple[str, float, float], ...]) -> None:
    for name, low, high in bounds:
        value = getattr(args, name)
        if value is not None and not low <= value <= high:  # also refuses nan
            parser.error(f"--{name.replace('_', '-')} must be in [{low}, {high}], got {value}")
