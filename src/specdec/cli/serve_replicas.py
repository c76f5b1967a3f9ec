"""`specdec serve --replicas N`: the same server as N Ray Serve replicas behind one endpoint.

Ray is an optional dependency (`pip install 'specdec[cluster]'`); nothing here imports it
before --replicas is asked for. See docs/replicas.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from specdec.cli.serve_build import build_server
from specdec.cli.serve_options import build_parser, check_replica_arguments, warn_if_open
from specdec.errors import SpecdecError

APP_NAME = "specdec"
INSTALL_HINT = "pip install 'specdec[cluster]'  (that is: pip install 'ray[serve]')"


@dataclass
class ServerBuilder:
    """Picklable: builds a replica's engine and app from the command's arguments."""

    args: argparse.Namespace

    def __call__(self, metrics: Any) -> tuple[Any, Any]:
        return build_server(self.args, metrics)


def replica_options(args: argparse.Namespace) -> Any:
    from specdec.server.replicas import ReplicaOptions

    ongoing = args.max_ongoing_requests or args.max_batch_size + args.max_queue
    return ReplicaOptions(replicas=args.replicas, cpus=args.replica_cpus,
                          gpus=args.replica_gpus, max_ongoing_requests=ongoing,
                          max_queued_requests=max(1, args.max_queue),  # Ray's least is 1
                          min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                          target_ongoing_requests=args.target_ongoing_requests,
                          shutdown_grace=args.shutdown_grace, name=APP_NAME)


def replica_args(args: argparse.Namespace, ongoing: int) -> argparse.Namespace:
    """What each replica builds its server from: its threads, and an engine queue that never
    refuses what Ray lets through (Ray's max_ongoing_requests is the bound)."""
    own = copy.copy(args)
    own.threads = args.threads or max(1, int(args.replica_cpus))
    own.max_queue = ongoing
    return own


def app_builder(config: dict[str, str]) -> Any:
    """Ray Serve application builder, for a Serve config file or KubeRay's RayService:
    `import_path: specdec.cli.serve_replicas:app_builder` with `args: {argv: "<the flags of
    specdec serve --replicas ...>"}` (docs/replicas.md). Host and port are the cluster's."""
    import shlex

    from specdec.server.replicas import deployment

    parser = build_parser()
    args = parser.parse_args(shlex.split(config.get("argv", "")))
    if args.replicas is None:
        args.replicas = 1
    check_replica_arguments(parser, args)
    options = replica_options(args)
    return deployment(ServerBuilder(replica_args(args, options.max_ongoing_requests)), options)


def run_replicas(args: argparse.Namespace) -> int:
    """Deploy, serve until SIGINT/SIGTERM, drain, stop (and stop the local cluster)."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SpecdecError(f"--replicas needs Ray Serve, an optional dependency: "
                           f"{INSTALL_HINT}") from None
    from specdec.drafters.factory import build_gamma, validate_spec
    from specdec.server.replica_proxy import PROXY_CALLBACK, PROXY_CALLBACK_ENV
    from specdec.server.replicas import deployment

    build_gamma(args.gamma)  # the replicas would fail on these: fail before starting Ray
    validate_spec(args.draft, "--draft")
    warn_if_open(args.host, args.api_key)
    options = replica_options(args)
    build = ServerBuilder(replica_args(args, options.max_ongoing_requests))
    app = deployment(build, options)
    local = args.ray_address is None
    if local:
        _warn_contention(options.replicas, build.args.threads)
        # the proxy reads it when it starts: Ray's errors in OpenAI's format (replica_proxy)
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    level = args.log_level.upper()
    ray.init(address=args.ray_address, include_dashboard=False if local else None,
             logging_level=level, log_to_driver=level in ("INFO", "DEBUG"))
    stop = _Stopper()
    try:
        serve.start(http_options={"host": args.host, "port": args.port},
                    logging_config={"log_level": level})
        serve.run(app, name=APP_NAME, route_prefix="/",
                  logging_config={"log_level": level})
        print(f"specdec serve: {options.replicas} replica(s) of {args.target} at "
              f"http://{args.host}:{args.port} (Ray Serve; Ctrl-C stops)", file=sys.stderr,
              flush=True)
        stop.wait()
        _drain(serve, args.shutdown_grace, stop)
    finally:
        if local:  # every response has ended: stopping the cluster stops Serve with it
            ray.shutdown()
        else:  # the cluster and its Serve stay: take our application off it
            serve.delete(APP_NAME)
    return 0


class _Stopper:
    """SIGINT/SIGTERM: the first asks to drain, the second cuts the wait, the third quits."""

    def __init__(self) -> None:
        self.signals = 0
        self.event = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals >= 3:
            print("specdec: quit", file=sys.stderr, flush=True)
            os._exit(130)
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(0.5):  # a timeout keeps the main thread taking signals
            pass


def _drain(serve: Any, grace: float, stop: _Stopper) -> None:
    """Every replica stops taking requests; running ones get `grace` seconds, then an error
    event (as a single server's Ctrl-C). Returns once every replica is idle, or after the
    grace and the replicas' next look at the board; a second signal cuts the wait short."""
    from specdec.server.replica_metrics import PERIOD_S

    board = serve.get_deployment_handle("SpecdecBoard", app_name=APP_NAME)
    told = board.drain.remote(grace).result(timeout_s=10)
    print(f"specdec: shutting down: {told} replica(s) stop taking requests; running ones stop "
          f"within {grace:g}s (Ctrl-C again to stop now)", file=sys.stderr, flush=True)
    deadline = time.monotonic() + grace + 2 * PERIOD_S + 0.5
    signals = stop.signals
    while time.monotonic() < deadline and stop.signals == signals:
        time.sleep(PERIOD_S / 4)
        if board.drained.remote().result(timeout_s=10):
            time.sleep(0.5)  # the last events are on their way through the proxy
            return


def _warn_contention(replicas: int, threads: int) -> None:
    cores = os.cpu_count() or 1
    if replicas * threads > cores:
        print(f"specdec serve: warning: {replicas} replicas x {threads} thread(s) on {cores} "
              "cores: they will slow each other down", file=sys.stderr)
