"""Limits of `specdec serve`: queue bound (429), body size (413), disconnects, no template."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_support import save_tiny_model, serve

LONG = 480  # tokens of a generation that is still running when the next requests arrive


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    # no chat template; 8 layers so a long generation takes a while; no drafter
    model = save_tiny_model(tmp_path_factory.mktemp("limits_model"), chat_template=None,
                            layers=8)
    with serve("--target", str(model), "--draft", "none", "--dtype", "float32",
               "--threads", "1", "--served-model-name", "tiny", "--max-queue", "1",
               "--max-batch-size", "1",
               "--max-body-bytes", "4096", "--max-tokens-limit", str(LONG)) as base:
        yield base


def post(url: str, body: dict | str, path: str = "completions", **kwargs) -> httpx.Response:
    raw = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{url}/v1/{path}", content=raw, timeout=60,
                      headers={"Content-Type": "application/json"}, **kwargs)


def long_stream(client: httpx.Client, url: str):
    body = {"model": "tiny", "prompt": "long", "max_tokens": LONG, "ignore_eos": True,
            "stream": True}
    return client.stream("POST", f"{url}/v1/completions", json=body)


def metric(url: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise KeyError(name)


def wait_idle(url: str, timeout: float = 20.0) -> float:
    """Seconds until nothing runs or waits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        health = httpx.get(f"{url}/health").json()
        if not health["busy"] and health["queue_length"] == 0:
            return time.monotonic() - start
        time.sleep(0.02)
    raise TimeoutError("server still busy")


def test_chat_without_a_template_is_a_clear_400(url) -> None:
    response = post(url, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
                    path="chat/completions")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "no_chat_template" and "chat template" in error["message"]


def test_body_over_the_limit_is_413(url) -> None:
    big = {"model": "tiny", "prompt": "a" * 5000}
    response = post(url, big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    raw = json.dumps(big).encode()
    parts = (raw[i:i + 1000] for i in range(0, len(raw), 1000))  # chunked: no Content-Length
    response = httpx.post(f"{url}/v1/completions", content=parts, timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_disconnect_mid_stream_frees_the_slot_and_the_next_is_served(url) -> None:
    cancelled = metric(url, "specdec_requests_total", outcome="cancelled")
    tokens = metric(url, "specdec_generated_tokens_total")
    with httpx.Client(timeout=60) as client, long_stream(client, url) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    wait_idle(url)
    assert metric(url, "specdec_requests_total", outcome="cancelled") == cancelled + 1
    assert metric(url, "specdec_generated_tokens_total") - tokens < LONG / 2
    served = post(url, {"model": "tiny", "prompt": "next", "max_tokens": 5, "ignore_eos": True})
    assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] == 5


def test_full_queue_answers_429_and_drains(url) -> None:
    openai_client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with httpx.Client(timeout=60) as client, long_stream(client, url) as running:
        lines = running.iter_lines()  # keep it: closing the iterator closes the connection
        assert next(line for line in lines if line.startswith("data:"))
        with long_stream(client, url) as waiting:
            assert waiting.status_code == 200
            assert httpx.get(f"{url}/health").json()["queue_length"] == 1
            refused = post(url, {"model": "tiny", "prompt": "one more", "max_tokens": 3})
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
            with pytest.raises(openai.RateLimitError):
                openai_client.completions.create(model="tiny", prompt="x", max_tokens=3)
    wait_idle(url)
    assert metric(url, "specdec_requests_total", outcome="rejected") >= 2
    done = openai_client.completions.create(model="tiny", prompt="after", max_tokens=4,
                                            extra_body={"ignore_eos": True})
    assert done.usage.completion_tokens == 4
