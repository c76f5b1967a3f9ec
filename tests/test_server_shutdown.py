"""Ctrl-C on a real `specdec serve`: every client gets a last message, the process exits fast.

A long stream runs and four requests wait when SIGINT arrives: the waiting ones get 503 (an
error event on a stream) at once, the running stream gets an error event after at most
--shutdown-grace seconds, and the process exits with code 0 and no traceback.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from server_support import char_tokenizer, start_server

GRACE = 1.0
LONG = 15000  # tokens: minutes of generation, never finishes inside the test


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """A tiny llama with a 16k context, so that one generation can run for minutes."""
    path = tmp_path_factory.mktemp("long_model")
    tokenizer = char_tokenizer(chat_template=None)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=16384, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def start(model: Path, grace: float):
    return start_server("--target", str(model), "--draft", "none", "--dtype", "float32",
                        "--threads", "1", "--served-model-name", "tiny", "--max-batch-size", "1",
                        "--max-tokens-limit", str(LONG), "--shutdown-grace", str(grace))


def request(url: str, stream: bool, out: dict, started: threading.Event | None = None) -> None:
    """POST a long completion; out gets the status and, for a stream, its data lines."""
    body = {"model": "tiny", "prompt": "go", "max_tokens": LONG, "ignore_eos": True,
            "stream": stream}
    try:
        with httpx.Client(timeout=60) as client, \
                client.stream("POST", f"{url}/v1/completions", json=body) as response:
            out["status"] = response.status_code
            if not stream:
                out["body"] = json.loads(response.read())
                return
            lines = out.setdefault("lines", [])
            for line in response.iter_lines():
                if line.startswith("data:"):
                    lines.append(line[5:].strip())
                    if started is not None and len(lines) >= 5:
                        started.set()
    except httpx.HTTPError as error:  # no last message: the test fails on it
        out["error"] = repr(error)


def events(out: dict) -> list:
    return [json.loads(line) for line in out["lines"] if line != "[DONE]"]


def test_ctrl_c_ends_the_stream_and_the_queue_within_the_grace(long_model):
    process, url = start(long_model, GRACE)
    try:
        running: dict = {}
        started = threading.Event()
        threads = [threading.Thread(target=request, args=(url, True, running, started))]
        threads[0].start()
        assert started.wait(30), running
        queued = [{} for _ in range(4)]
        for i, out in enumerate(queued):
            threads.append(threading.Thread(target=request, args=(url, i % 2 == 0, out)))
            threads[-1].start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").json()["queue_length"] < 4:
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.05)

        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=GRACE + 10)
        elapsed = time.monotonic() - sent
        for thread in threads:
            thread.join(timeout=10)
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 0, output
    assert elapsed < GRACE + 4, f"exit took {elapsed:.1f}s"
    assert "Traceback" not in output and "shutting down" in output
    # the running stream: tokens, then the error event and [DONE]
    assert running["status"] == 200 and "error" not in running, running.get("error")
    assert running["lines"][-1] == "[DONE]"
    last = events(running)[-1]
    assert last["error"]["code"] == "shutting_down"
    assert "generation stopped after" in last["error"]["message"]
    assert 5 <= len(events(running)) - 1 < LONG
    for i, out in enumerate(queued):
        assert "error" not in out, out.get("error")
        if i % 2 == 0:  # stream: an error event, then [DONE]
            assert out["status"] == 200 and out["lines"][-1] == "[DONE]"
            assert events(out)[-1]["error"]["message"].endswith("request not started")
        else:
            assert out["status"] == 503
            assert out["body"]["error"]["code"] == "shutting_down"


def test_a_second_ctrl_c_stops_the_generation_now(long_model):
    process, url = start(long_model, grace=60)
    try:
        running: dict = {}
        started = threading.Event()
        thread = threading.Thread(target=request, args=(url, True, running, started))
        thread.start()
        assert started.wait(30), running
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=15)
        elapsed = time.monotonic() - sent
        thread.join(timeout=10)
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0 and elapsed < 5, (code, elapsed, output)
    assert "Traceback" not in output, output
    assert running["lines"][-1] == "[DONE]"  # a last message even then
    assert events(running)[-1]["error"]["code"] == "shutting_down"


def test_health_is_503_once_the_worker_is_gone():
    from fastapi.testclient import TestClient

    from specdec import SpeculativeDecoder
    from specdec.models import wrap
    from specdec.server import Engine, create_app
    from tiny import tiny_llama

    tokenizer = char_tokenizer(chat_template=None)
    engine = Engine(SpeculativeDecoder(wrap(tiny_llama(len(tokenizer), layers=1), tokenizer),
                                       None))
    with TestClient(create_app(engine, "tiny")) as client:
        assert client.get("/health").status_code == 200
        with engine._wake:  # the worker thread ends as if it had died
            engine._stopping = True
            engine._wake.notify_all()
        engine._thread.join(timeout=10)
        response = client.get("/health")
        assert response.status_code == 503 and response.json()["status"] == "unavailable"
