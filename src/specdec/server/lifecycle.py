"""Stopping `specdec serve` on SIGINT/SIGTERM: promptly, and with a last word to every client.

uvicorn alone stops accepting connections, then waits for every open response to end: a long
stream and the whole queue behind it run to completion first. Here the first signal also
shuts the engine down: waiting requests fail at once (503, an error event on a stream), the
running one gets `grace` seconds to finish and is then stopped after its current step with
the same error. A second signal stops it after its current step; a third quits at once
(exit code 130). A signal-stopped server exits normally (code 0).
"""

from __future__ import annotations

import asyncio
import os
import sys
from types import FrameType

import uvicorn

from specdec.server.engine import Engine


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: Engine, grace: float):
        super().__init__(config)
        self.engine = engine
        self.grace = grace
        self.signals = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals >= 3:  # the user insists: no more waiting for anything
            print("specdec: quit", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        if self.signals == 1:
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after its shutdown, which turns a stop that
            # was asked for into KeyboardInterrupt or death by SIGTERM
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()
        # not uvicorn's forced exit on the second signal: it cancels the running responses
        # mid-write (no last message, tracebacks); stopping the generation now ends them
        grace = self.grace if self.signals == 1 else 0.0
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet
            return
        # a signal handler may interrupt the loop anywhere: act from the loop itself
        loop.call_soon_threadsafe(self._shut_down_engine, grace)

    def _shut_down_engine(self, grace: float) -> None:
        unfinished = self.engine.shut_down(grace)
        again = "again to stop it now" if grace > 0 else "twice more to quit at once"
        print(f"specdec: shutting down: {unfinished} unfinished request(s) stop within "
              f"{grace:g}s (Ctrl-C {again})", file=sys.stderr, flush=True)


def serve(app: object, engine: Engine, host: str, port: int, log_level: str,
          grace: float) -> None:
    """Run app until SIGINT/SIGTERM; then stop within about `grace` seconds."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=grace + 2)  # a backstop only
    server = GracefulServer(config, engine, grace)
    try:
        server.run()
    finally:
        engine.stop(timeout=2)  # after a forced quit the lifespan shutdown did not run
