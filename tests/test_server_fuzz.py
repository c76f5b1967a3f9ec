"""Fuzzing a real `specdec serve` process: Schemathesis draws bodies from the OpenAPI schema
the server publishes (valid ones and, in its negative mode, every kind of violation), and
Hypothesis adds JSON of any shape with the API's field names at the float and int limits.
Every answer must be a 2xx, or a 4xx in OpenAI's error format; never a 5xx. Meanwhile a
normal greedy stream runs again and again and must get the same text every time.

The default run is sized to a couple of minutes; `-m slow` runs a longer one."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from server_support import save_tiny_model, serve

FIELDS = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
          "stream", "stop", "logit_bias", "logprobs", "top_logprobs", "repetition_penalty",
          "presence_penalty", "frequency_penalty", "n", "echo", "coupled", "ignore_eos",
          "max_completion_tokens", "stream_options", "model"]
EXTREMES = st.sampled_from([0, -0.0, 1e-320, 1e-40, 1e308, -1e308, 2**63, 2**64, -(2**63) - 1,
                            10**30, 2**70, 1.0000001, 4096, 4097, -1, "", "\x00", "ü" * 300])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                    | EXTREMES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
EXAMPLES = int(os.environ.get("SPECDEC_FUZZ_EXAMPLES", "40"))
NORMAL = {"prompt": "fuzz me not", "max_tokens": 12, "temperature": 0, "ignore_eos": True}


@dataclass
class Tally:
    sent: int = 0
    seconds: float = 0.0  # in the requests (the rest is drawing them)
    by_status: dict[int, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = save_tiny_model(tmp_path_factory.mktemp("fuzz_model"))
    with serve("--target", str(model), "--draft", "ngram", "--dtype", "float32", "--threads",
               "1", "--max-tokens-limit", "16", "--max-batch-size", "4") as url:
        yield url


@pytest.fixture(scope="module")
def innocent(server):
    """A normal request, streamed again and again while the fuzzing runs: its texts."""
    want = httpx.post(f"{server}/v1/completions", json=NORMAL, timeout=60).json()
    texts: list[str | None] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            body = {**NORMAL, "stream": True}
            pieces, failed = [], False
            with httpx.stream("POST", f"{server}/v1/completions", json=body,
                              timeout=60) as response:
                failed = response.status_code != 200
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        failed = failed or "error" in event
                        pieces.extend(c["text"] for c in event.get("choices", []))
            texts.append(None if failed else "".join(pieces))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield want["choices"][0]["text"], texts
    stop.set()
    thread.join(timeout=60)


def check(response_status: int, body: bytes, tally: Tally, request: object) -> None:
    tally.sent += 1
    tally.by_status[response_status] = tally.by_status.get(response_status, 0) + 1
    assert response_status < 500, (request, body[:500])
    if response_status >= 400:
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error


def schema_strategy(url: str) -> st.SearchStrategy:
    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json").json())
    operations = [schema[path]["POST"] for path in ("/v1/completions", "/v1/chat/completions")]
    return st.one_of([op.as_strategy(generation_mode=mode) for op in operations
                      for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])


def run_fuzz(server: str, innocent, examples: int) -> Tally:
    tally = Tally()
    cases = schema_strategy(server)
    bodies = st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, JSON))
    paths = st.sampled_from(["/v1/completions", "/v1/chat/completions"])

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases, body=bodies, path=paths)
    def fuzz(case, body, path) -> None:
        started = time.perf_counter()
        response = case.call(base_url=server, timeout=60)
        check(response.status_code, response.content, tally, (case.path, case.body))
        # NaN and Infinity too, as Python's json writes them (not JSON: must be a 400)
        raw = httpx.post(f"{server}{path}", content=json.dumps(body, allow_nan=True),
                         headers={"Content-Type": "application/json"}, timeout=60)
        check(raw.status_code, raw.content, tally, (path, body))
        tally.seconds += time.perf_counter() - started

    fuzz()
    return tally


def assert_unaffected(server: str, innocent, tally: Tally) -> None:
    want, texts = innocent
    assert httpx.get(f"{server}/health").status_code == 200
    assert texts and all(text == want for text in texts), texts
    print(f"fuzz: {tally.sent} requests ({tally.seconds:.0f} s waiting for answers), "
          f"statuses {sorted(tally.by_status.items())}; "
          f"innocent stream ran {len(texts)} times, all exact")


def test_fuzzed_requests_never_get_a_5xx_and_never_touch_a_neighbour(server, innocent):
    tally = run_fuzz(server, innocent, EXAMPLES)
    assert tally.sent == 2 * EXAMPLES
    assert_unaffected(server, innocent, tally)


@pytest.mark.slow
def test_a_long_fuzz_run(server, innocent):
    tally = run_fuzz(server, innocent, 20 * EXAMPLES)
    assert_unaffected(server, innocent, tally)
