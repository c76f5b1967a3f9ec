"""`tools` and `tool_choice` on /v1/chat/completions, through the openai client: required and
named calls are constrained to the function's schema (exact under speculation), "auto"
reads <tool_call> blocks, a conversation with tool results goes on; bad input gets a 400."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from fastapi.testclient import TestClient

from server_support import char_tokenizer
from specdec import SpeculativeDecoder
from specdec.models import wrap
from specdec.server import Engine, create_app
from specdec.server.tools import tool_plan
from tiny import perturbed, tiny_llama

# tools by name only: a character model's context (512) cannot hold their schemas
TEMPLATE = ("{% if tools %}<s>tools:{% for t in tools %} {{ t.function.name }}{% endfor %}"
            "\n{% endif %}"
            "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}"
            "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>"
            "{{ c.function | tojson }}</tool_call>{% endfor %}{% endif %}\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 8},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME = {"type": "object", "additionalProperties": False, "required": ["zone"],
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                           "description": "Weather in a city"}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def http():
    tokenizer = char_tokenizer(TEMPLATE)
    model = tiny_llama(len(tokenizer), layers=1)
    decoder = SpeculativeDecoder(wrap(model, tokenizer, name="t"),
                                 wrap(perturbed(model, 0.3), tokenizer, name="d"), 3)
    with TestClient(create_app(Engine(decoder), "tiny")) as client:
        yield client


@pytest.fixture(scope="module")
def client(http):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http,
                         max_retries=0)


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_time"}}])
def test_required_and_named_calls_follow_the_function_schema(client, choice):
    for seed in range(4):
        response = client.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=120,
            temperature=1.0, seed=seed)
        result = response.choices[0]
        assert result.finish_reason == "tool_calls"
        call = result.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        if isinstance(choice, dict):
            assert call.function.name == "get_time"
        schema = WEATHER if call.function.name == "get_weather" else TIME
        jsonschema.validate(json.loads(call.function.arguments), schema)


def test_a_conversation_with_tool_results_goes_on(client):
    first = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                           tool_choice="required", max_tokens=120,
                                           temperature=0)
    message = first.choices[0].message
    call = message.tool_calls[0]
    follow = ASK + [message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "12 C, rain"}]
    second = client.chat.completions.create(model="tiny", messages=follow, tools=TOOLS,
                                            tool_choice="none", max_tokens=8, temperature=0)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason == "length"


def test_auto_reads_tool_call_blocks():
    plan = tool_plan(TOOLS, "auto")
    text = 'Let me check. <tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}' \
           '</tool_call><tool_call>{"name": "nope", "arguments": {}}</tool_call>'
    calls, rest = plan.calls(text)
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"zone": "UTC"}
    assert rest == "Let me check."
    assert plan.calls("no call here") is None
    assert plan.constraint() is None and tool_plan(TOOLS, "none").calls(text) is None


def test_auto_without_a_call_answers_text(client):
    response = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                              max_tokens=10, temperature=0)
    assert response.choices[0].message.tool_calls is None
    assert response.choices[0].message.content


@pytest.mark.parametrize("body,param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "stream": True}, "stream"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "strin"}}}], "tool_choice": "required"}, "tools"),
])
def test_bad_tool_requests_get_a_400(http, body, param):
    response = http.post("/v1/chat/completions",
                         json={"messages": ASK, "max_tokens": 8, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
