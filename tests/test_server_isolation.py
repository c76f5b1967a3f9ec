"""The issue's table, on a real `specdec serve` process: each bad request is answered alone
(400 naming its field, or served when the value has a documented meaning) while a normal
stream runs beside it and gets exactly its text; the next request is served too. Also: the
KV cache budget (400 with the numbers, or a wait) and a worker that dies (503 everywhere)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from server_support import save_tiny_model, serve

NORMAL = {"prompt": "The quick brown fox", "max_tokens": 60, "temperature": 0,
          "ignore_eos": True}
BAD = [  # body fields, the status they get, the field the error names
    ({"temperature": 1e-40}, 200, None),  # below 1e-5: greedy
    ({"seed": 2**70, "temperature": 1}, 400, "seed"),
    ({"seed": -(2**70), "temperature": 1}, 400, "seed"),
    ({"prompt": [10**20, 5]}, 400, "prompt"),
    ({"repetition_penalty": 1e-30}, 400, "repetition_penalty"),
    ({"logit_bias": {"99999999999999999999999": 1}}, 400, "logit_bias"),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("isolation_model"))


def stream_text(url: str, body: dict, out: dict) -> None:
    """A streaming completion's status and text (in a thread beside the bad requests)."""
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      timeout=120) as response:
        out["status"] = response.status_code
        text = []
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                if "error" in event:
                    out["error"] = event["error"]
                else:
                    text.append(event["choices"][0]["text"])
        out["text"] = "".join(text)


def complete(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"prompt": "ab", "max_tokens": 8, **body},
                      timeout=120)


@pytest.mark.parametrize("batch", ["4", "1"])
def test_a_bad_request_fails_alone(model, batch) -> None:
    with serve("--target", str(model), "--draft", "none", "--dtype", "float32", "--threads",
               "1", "--max-batch-size", batch) as url:
        want = complete(url, NORMAL).json()["choices"][0]["text"]
        for fields, status, param in BAD:
            beside: dict = {}
            thread = threading.Thread(target=stream_text, args=(url, NORMAL, beside))
            thread.start()
            response = complete(url, fields)
            thread.join(timeout=120)
            assert response.status_code == status, (fields, response.text)
            if status == 400:
                error = response.json()["error"]
                assert error["param"] == param and error["type"] == "invalid_request_error"
                assert "Overflow" not in error["message"], error
            assert beside == {"status": 200, "text": want}, fields
            assert complete(url, {}).status_code == 200, fields
        assert httpx.get(f"{url}/health").status_code == 200


def test_the_kv_cache_budget_refuses_what_never_fits_and_queues_what_fits_later(model):
    # the tiny model caches 256 bytes a position in 256-position blocks: 200 kB holds one
    # row of 512 positions and a prompt's prefill, not two
    with serve("--target", str(model), "--draft", "none", "--dtype", "float32", "--threads",
               "1", "--kv-cache-memory", "200kB") as url:
        refused = complete(url, {"max_tokens": 500})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "kv_cache_budget" and "MiB" in error["message"]
        results: list[dict] = [{}, {}]
        body = {**NORMAL, "max_tokens": 300}
        threads = [threading.Thread(target=stream_text, args=(url, body, out))
                   for out in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert results[0] == results[1] and results[0]["status"] == 200  # one waited
        metrics = httpx.get(f"{url}/metrics").text
        assert "specdec_requests_total" in metrics


def test_a_dead_worker_fails_everyone_and_health_says_so(monkeypatch) -> None:
    """A fatal error in the worker (here: the batch cannot be rebuilt after a failed step):
    the running request gets an error, /health turns 503 and new requests get 503 at once."""
    from fastapi.testclient import TestClient

    from server_support import char_tokenizer
    from specdec import SpeculativeDecoder
    from specdec.models import wrap
    from specdec.server import Engine, create_app
    from tiny import tiny_llama

    tokenizer = char_tokenizer(chat_template=None)
    decoder = SpeculativeDecoder(wrap(tiny_llama(len(tokenizer), layers=1), tokenizer), None)
    engine = Engine(decoder)
    with TestClient(create_app(engine, "tiny")) as client:
        assert client.get("/health").status_code == 200

        def broken_step():
            raise RuntimeError("device lost")

        def broken_batch(rows):
            raise RuntimeError("cannot allocate")

        monkeypatch.setattr(engine._batch, "step", broken_step)
        monkeypatch.setattr(decoder, "batch", broken_batch)
        response = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 4})
        assert response.status_code == 500 and "device lost" in response.text
        engine._thread.join(timeout=10)
        assert not engine._thread.is_alive()
        health = client.get("/health")
        assert health.status_code == 503
        late = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 4})
        assert late.status_code == 503 and "cannot allocate" in late.text
