"""response_format on /v1/chat/completions and /v1/completions, streamed or not: the output
obeys it or the request gets a 400 naming response_format; neighbours are unaffected."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest
from fastapi.testclient import TestClient

from server_support import char_tokenizer
from specdec import SpeculativeDecoder
from specdec.models import wrap
from specdec.server import Engine, create_app
from specdec.server.engine import EngineConfig
from tiny import perturbed, tiny_llama

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "rain"],
          "properties": {"city": {"type": "string", "maxLength": 6},
                         "rain": {"type": "boolean"}}}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA,
                                                       "strict": True}}
CHAT = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def client():
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), layers=1)
    decoder = SpeculativeDecoder(wrap(model, tokenizer, name="t"),
                                 wrap(perturbed(model, 0.3), tokenizer, name="d"), 3)
    engine = Engine(decoder, EngineConfig(max_batch_size=4))
    with TestClient(create_app(engine, "tiny")) as client:
        yield client


def _content(body: dict) -> str:
    choice = body["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def _stream(client, path: str, body: dict) -> tuple[str, str]:
    text, finish = "", None
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice.get("delta", {}).get("content") or choice.get("text") or ""
            finish = choice["finish_reason"] or finish
    return text, finish


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_json_schema_is_obeyed_on_both_endpoints(client, path, stream):
    for seed in range(3):
        body = {"max_tokens": 60, "temperature": 1.0, "seed": seed,
                "response_format": JSON_SCHEMA}
        body.update({"messages": CHAT} if "chat" in path else {"prompt": "Oslo:"})
        if stream:
            text, finish = _stream(client, path, body)
        else:
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            text, finish = _content(response.json()), response.json()["choices"][0][
                "finish_reason"]
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_and_length(client):
    body = {"messages": CHAT, "max_tokens": 200, "temperature": 0,
            "response_format": {"type": "json_object"}}
    response = client.post("/v1/chat/completions", json=body).json()
    text = _content(response)
    assert text.startswith("{")
    if response["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    short = client.post("/v1/chat/completions",
                        json={**body, "max_tokens": 3, "response_format": JSON_SCHEMA}).json()
    assert short["choices"][0]["finish_reason"] == "length"
    assert _content(short) == '{"' + _content(short)[2:] and len(_content(short)) == 3
    text_mode = client.post("/v1/chat/completions",
                            json={**body, "max_tokens": 8, "response_format": {"type": "text"}})
    assert text_mode.status_code == 200


@pytest.mark.parametrize("response_format,words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
     "does not compile"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True,
                                             "schema": {"type": "object", "if": {}}}}, "if"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {f"k{i}": {"type": "string", "description": "x" * 50}
                                         for i in range(2000)}}}}, "too large"),
    ({"type": "regex", "regex": "é+"}, "matches nothing"),
    ({"type": "grammar", "grammar": "start: nowhere"}, "does not compile"),
    ({"type": "yaml"}, "type must be"),
])
def test_bad_response_formats_get_a_400_naming_it(client, response_format, words):
    response = client.post("/v1/chat/completions",
                           json={"messages": CHAT, "max_tokens": 8,
                                 "response_format": response_format})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and words in error["message"], error


def test_constrained_and_free_requests_share_the_batch(client):
    """Concurrent requests: two schemas, a bad one and free text, at once; each gets its own."""
    other = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
             "minItems": 1, "maxItems": 3}
    bodies = [{"messages": CHAT, "max_tokens": 60, "temperature": 1.0, "seed": 1,
               "response_format": JSON_SCHEMA},
              {"prompt": "n:", "max_tokens": 60, "temperature": 1.0, "seed": 2,
               "response_format": {"type": "json_schema",
                                   "json_schema": {"name": "n", "schema": other}}},
              {"prompt": "free", "max_tokens": 20, "temperature": 1.0, "seed": 3},
              {"messages": CHAT, "max_tokens": 8, "response_format": {"type": "regex",
                                                                      "regex": "[0-9"}}]
    results: list = [None] * len(bodies)

    def send(i: int) -> None:
        path = "/v1/chat/completions" if "messages" in bodies[i] else "/v1/completions"
        results[i] = client.post(path, json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [200, 200, 200, 400]
    jsonschema.validate(json.loads(_content(results[0].json())), SCHEMA)
    jsonschema.validate(json.loads(_content(results[1].json())), other)
    assert len(_content(results[2].json())) > 0
    alone = client.post("/v1/completions", json=bodies[1]).json()
    assert _content(alone) == _content(results[1].json())  # its seed, not its neighbours
