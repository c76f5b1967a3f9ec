"""`specdec serve --replicas 2` end to end: a local cluster that starts and stops with the
command, and Ctrl-C that drains like one server's (slow: a Ray cluster of its own)."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from server_support import start_server
from test_server_replicas import LONG, events, models, stream  # noqa: F401 (a fixture)

GRACE = 1.0

pytestmark = pytest.mark.slow


def test_replicas_command_serves_and_ctrl_c_drains(models):  # noqa: F811
    target, draft = models
    process, url = start_server(
        "--target", str(target), "--draft", str(draft), "--gamma", "3", "--dtype", "float32",
        "--threads", "1", "--served-model-name", "tiny", "--max-tokens-limit", str(LONG),
        "--replicas", "2", "--shutdown-grace", str(GRACE), timeout=600)
    try:
        running: dict = {}
        started = threading.Event()
        thread = threading.Thread(target=stream, args=(url, "go", LONG, running, started))
        thread.start()
        assert started.wait(60), running
        assert httpx.get(f"{url}/health").status_code == 200
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        thread.join(timeout=30)
        code = process.wait(timeout=120)
        elapsed = time.monotonic() - sent
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, output
    assert "shutting down" in output and "Traceback" not in output, output
    # the running stream: stopped after the grace with the single server's error event
    assert running["lines"][-1] == "[DONE]"
    assert events(running)[-1]["error"]["code"] == "shutting_down", running["lines"][-2:]
    assert elapsed < GRACE + 60, elapsed
