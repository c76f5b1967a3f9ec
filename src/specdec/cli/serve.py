"""`specdec serve`: an OpenAI-compatible HTTP server (loopback by default)."""

from __future__ import annotations

import os
import sys

from specdec.cli.serve_build import build_server
from specdec.cli.serve_options import build_parser, check_arguments, warn_if_open
from specdec.cli.serve_replicas import run_replicas


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if args.replicas is not None:  # Ray Serve replicas (specdec.cli.serve_replicas)
        return run_replicas(args)
    from specdec.server.lifecycle import serve

    engine, app = build_server(args)
    warn_if_open(args.host, args.api_key)
    serve(app, engine, args.host, args.port, args.log_level, args.shutdown_grace)
    # every response is finished and the worker has ended: skip the interpreter's teardown of
    # the loaded model (seconds: every tensor freed one by one), which would make a stopped
    # server linger
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
