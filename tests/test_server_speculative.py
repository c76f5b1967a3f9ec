"""Per-request speculation control: `"speculative": {"enabled": false}` or
`{"max_draft_tokens": N}` changes what is drafted, never the text.

A real `specdec serve` (tiny pair, gamma 4): greedy and seeded coupled requests on both
endpoints give the same text with speculation on, off and capped, and the response's
`speculative` counters show the cap held; bad values are a 400 naming the field; the OpenAPI
schema publishes the object. The batched loop honours each row's cap beside uncapped rows.
"""

from __future__ import annotations

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from server_support import save_tiny_pair, serve
from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.factory import build_gamma
from specdec.models import wrap

GAMMA = 4
CONTROLS = [None, {"enabled": False}, {"max_draft_tokens": 0}, {"max_draft_tokens": 1},
            {"max_draft_tokens": 2, "enabled": True}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("speculative_models"), noise=0.1)


@pytest.fixture(scope="module")
def url(pair):
    target, draft = pair
    with serve("--target", str(target), "--draft", str(draft), "--gamma", str(GAMMA),
               "--dtype", "float32", "--threads", "1", "--served-model-name", "tiny") as base:
        yield base


def cap_of(control: dict | None) -> int:
    if control is None:
        return GAMMA
    return 0 if control.get("enabled") is False else control["max_draft_tokens"]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("sampling", [{"temperature": 0},
                                      {"temperature": 0.9, "top_p": 0.95, "seed": 11}])
def test_text_does_not_depend_on_the_control_and_the_cap_holds(url, chat, sampling) -> None:
    route = "/v1/chat/completions" if chat else "/v1/completions"
    prompt = {"messages": [{"role": "user", "content": "abcabcabc abc"}]} if chat else \
        {"prompt": "abcabcabcabc abcabc"}
    texts = set()
    with httpx.Client(base_url=url, timeout=60) as client:
        for control in CONTROLS:
            body = {"model": "tiny", "max_tokens": 24, "ignore_eos": True, **prompt,
                    **sampling, **({} if control is None else {"speculative": control})}
            response = client.post(route, json=body)
            assert response.status_code == 200, response.text
            answer = response.json()
            choice = answer["choices"][0]
            texts.add(choice["message"]["content"] if chat else choice["text"])
            stats, cap = answer["speculative"], cap_of(control)
            assert stats["drafted"] <= cap * stats["target_calls"]
            assert len(stats["drafted_at"]) <= cap  # no step drafted past the cap
            assert (stats["drafted"] > 0) == (cap > 0)
    assert len(texts) == 1


@pytest.mark.parametrize("control, field", [
    ({"max_draft_tokens": -1}, "max_draft_tokens"),
    ({"max_draft_tokens": 65}, "less than or equal to 64"),
    ({"max_draft_tokens": "2"}, "max_draft_tokens"), ({"enabled": "no"}, "enabled"),
    ({"n_max": 2}, "n_max"), ("off", "speculative")])
def test_bad_controls_are_a_400_naming_the_field(url, control, field) -> None:
    for route, prompt in (("/v1/completions", {"prompt": "hi"}),
                          ("/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}]})):
        response = httpx.post(f"{url}{route}", json={"model": "tiny", "max_tokens": 2,
                                                     "speculative": control, **prompt})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "speculative" and field in error["message"]


def test_openapi_publishes_the_control(url) -> None:
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    for route in ("/v1/completions", "/v1/chat/completions"):
        schema = paths[route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        control = schema["properties"]["speculative"]["anyOf"][0]
        assert control["properties"]["max_draft_tokens"]["anyOf"][0]["maximum"] == 64
        assert control["additionalProperties"] is False


def test_batched_rows_keep_their_own_caps(pair) -> None:
    """Rows with caps None / 0 / 1 / 3 in one batch under the batch controller: each row's
    greedy text equals plain decoding, and no row drafts past its cap."""
    target_dir, draft_dir = pair
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    target, draft = (wrap(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                          tokenizer, path.name) for path in (target_dir, draft_dir))
    prompts = ["abcabcabc abc", "xyzxyz xyz", "hello hello hello", "123123 123"]
    caps = [None, 0, 1, 3]
    params = [SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True,
                             max_draft_tokens=cap) for cap in caps]
    plain = SpeculativeDecoder(target, None, 0).generate_batch(prompts, params)
    spec = SpeculativeDecoder(target, draft, build_gamma("auto")).generate_batch(prompts, params)
    for want, got, cap in zip(plain, spec, caps, strict=True):
        assert got.tokens == want.tokens
        assert len(got.stats.drafted_at) <= (64 if cap is None else cap)
        if cap == 0:
            assert got.stats.drafted == 0
    assert spec[0].stats.drafted > 0  # the uncapped row speculated
