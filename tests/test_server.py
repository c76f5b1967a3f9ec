"""`specdec serve` as a real process with a tiny model, driven by the official openai client.

Greedy float32 output is compared token for token (one character per token) with the
library's own output for the same prompt; seeded sampling with the same seed too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoModelForCausalLM, AutoTokenizer

from server_support import save_tiny_pair, serve
from specdec import SamplingParams, SpeculativeDecoder
from specdec.models import wrap

GAMMA = 3
LIMIT = 256  # --max-tokens-limit; the tiny llama's context is 512


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("server_models"))


@pytest.fixture(scope="module")
def url(pair):
    target, draft = pair
    with serve("--target", str(target), "--draft", str(draft), "--gamma", str(GAMMA),
               "--dtype", "float32", "--threads", "1", "--served-model-name", "tiny",
               "--max-tokens-limit", str(LIMIT)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def library(pair):
    """The same target, drafter and gamma, run in this process."""
    target, draft = pair
    tokenizer = AutoTokenizer.from_pretrained(target)
    models = [wrap(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer,
                   path.name) for path in (target, draft)]
    return SpeculativeDecoder(models[0], models[1], GAMMA)


def chat_ids(library: SpeculativeDecoder, messages: list[dict]) -> list[int]:
    tokenizer = library.tokenizer
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def test_completion_equals_the_library_and_reports_usage_and_stats(client, library) -> None:
    want = library.generate("Hello there", SamplingParams(temperature=0, max_new_tokens=24))
    got = client.completions.create(model="tiny", prompt="Hello there", max_tokens=24,
                                    temperature=0)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == len("Hello there")
    assert got.usage.completion_tokens == len(want.tokens)
    spec = got.model_extra["speculative"]
    assert spec["drafted"] == want.stats.drafted and spec["accepted"] == want.stats.accepted
    assert spec["target_calls"] == want.stats.target_calls
    assert 0 < spec["acceptance_rate"] < 1


def test_stream_sends_one_chunk_per_token(client, library) -> None:
    want = library.generate("Speculate", SamplingParams(temperature=0, max_new_tokens=30,
                                                        ignore_eos=True))
    chunks = list(client.completions.create(model="tiny", prompt="Speculate", max_tokens=30,
                                            temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    texts = [c.choices[0].text for c in chunks if c.choices[0].finish_reason is None]
    assert "".join(texts) == want.text
    assert texts == list(want.text)  # accepted blocks split: one character token per chunk
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    assert last.usage.completion_tokens == 30
    spec = last.model_extra["speculative"]
    assert spec["target_calls"] < 30 and spec["accepted"] > 0  # blocks of several tokens


def test_chat_streamed_and_not_equals_the_library(client, library) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    want = library.generate(chat_ids(library, messages),
                            SamplingParams(temperature=0, max_new_tokens=20))
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20,
                                         temperature=0)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert got.usage.completion_tokens == len(want.tokens)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.tokens)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_across_blocks(client, library, stream: bool) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True)
    full = library.generate("Stop me", params).text
    start = next(i for i in range(8, 30) if full.find(full[i:i + 3]) == i)  # first occurrence
    stop = full[start:start + 3]  # three tokens: spans token and (usually) block boundaries
    got = client.completions.create(model="tiny", prompt="Stop me", max_tokens=40,
                                    temperature=0, stop=[stop, "never-there"], stream=stream,
                                    extra_body={"ignore_eos": True})
    if stream:
        chunks = list(got)
        text = "".join(c.choices[0].text for c in chunks)
        reason = chunks[-1].choices[0].finish_reason
    else:
        text, reason = got.choices[0].text, got.choices[0].finish_reason
    assert (text, reason) == (full[:start], "stop")


def test_seeded_sampling_equals_the_library(client, library) -> None:
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=40, min_p=0.02, seed=7,
                            max_new_tokens=24)
    want = library.generate("Sample", params).text
    kwargs = dict(model="tiny", prompt="Sample", max_tokens=24, temperature=0.8, top_p=0.9,
                  seed=7, extra_body={"top_k": 40, "min_p": 0.02})
    assert client.completions.create(**kwargs).choices[0].text == want
    assert "".join(c.choices[0].text for c in client.completions.create(
        stream=True, **kwargs)) == want
    # the extension field picks the rule: the rejection rule's draws are the library's too
    rejection = library.generate("Sample", dataclasses.replace(params, coupled=False)).text
    kwargs["extra_body"] = {**kwargs["extra_body"], "coupled": False}
    assert client.completions.create(**kwargs).choices[0].text == rejection


BAD = [  # (path, raw body, status, param)
    ("completions", "{not json", 400, None),
    ("completions", "[1, 2]", 400, None),
    ("completions", {"prompt": 5}, 400, "prompt"),
    ("completions", {"prompt": "a", "max_tokens": "10"}, 400, "max_tokens"),
    ("completions", {"prompt": "a", "temperature": "hot"}, 400, "temperature"),
    ("completions", {"prompt": "a", "stream": "yes"}, 400, "stream"),
    ("completions", {"model": "gpt-4", "prompt": "a"}, 404, "model"),
    ("completions", {"prompt": "a", "max_tokens": -5}, 400, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": LIMIT + 1}, 400, "max_tokens"),
    ("completions", {"prompt": "a", "temperature": -0.1}, 400, "temperature"),
    ("completions", {"prompt": "a", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "a", "top_p": 1.5}, 400, "top_p"),
    ("completions", {"prompt": "a", "top_k": -1}, 400, "top_k"),
    ("completions", {"prompt": "a", "min_p": 1}, 400, "min_p"),
    ("completions", {"prompt": "a", "n": 2}, 400, "n"),
    ("completions", {"prompt": ""}, 400, "prompt"),
    ("completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("completions", {"prompt": [5, 100000]}, 400, "prompt"),
    ("completions", {"prompt": "a" * 600}, 400, "prompt"),  # longer than the context
    ("completions", {"prompt": "a" * 400, "max_tokens": 200}, 400, "max_tokens"),
    ("completions", {"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, 400, "stop"),
    ("completions", {"prompt": "a", "logprobs": 21}, 400, "logprobs"),
    ("completions", {"prompt": "a", "logprobs": 2, "echo": True}, 400, "logprobs"),
    ("completions", {"prompt": "a", "frequency_penalty": 2.5}, 400, "frequency_penalty"),
    ("completions", {"prompt": "a", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ("completions", {"prompt": "a", "logit_bias": {"x": 1}}, 400, "logit_bias"),
    ("completions", {"prompt": "a", "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ("completions", {"prompt": "a", "logit_bias": {"100000": 1}}, 400, "logit_bias"),
    ("chat/completions", {"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2},
     400, "top_logprobs"),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {"prompt": "a"}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "a"}]}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "messages"),
]


def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(url, client) -> None:
    for path, body, status, param in BAD:
        raw = body if isinstance(body, str) else json.dumps(body)
        response = httpx.post(f"{url}/v1/{path}", content=raw,
                              headers={"Content-Type": "application/json"}, timeout=30)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"] and error["type"] == "invalid_request_error"
        assert error["param"] == param, (body, error)
    assert httpx.get(f"{url}/v1/missing").json()["error"]["code"] == "not_found"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="a", temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user",
                                                                  "content": "a"}])
    assert client.completions.create(model="tiny", prompt="still", max_tokens=3).usage


def test_models_health_and_metrics(url, client) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["queue_length"] == 0
    invalid_before = metric_samples(url).get(INVALID, 0.0)  # earlier tests may have sent some
    bad = httpx.post(f"{url}/v1/completions", json={"prompt": "a", "temperature": -1}, timeout=30)
    assert bad.status_code == 400
    client.completions.create(model="tiny", prompt="metrics", max_tokens=12, temperature=0,
                              extra_body={"ignore_eos": True})
    samples = metric_samples(url)
    value = lambda name, **labels: samples[(name, tuple(sorted(labels.items())))]  # noqa: E731
    assert value("specdec_requests_total", outcome="length") >= 1
    assert samples[INVALID] == invalid_before + 1  # the one bad request above, counted once
    assert value("specdec_generated_tokens_total") >= 12
    drafted = value("specdec_drafted_tokens_total")
    accepted = value("specdec_accepted_tokens_total")
    assert 0 < accepted < drafted
    assert value("specdec_acceptance_rate") == pytest.approx(accepted / drafted)
    calls = value("specdec_target_calls_total")
    assert value("specdec_mean_accepted_length") == pytest.approx(accepted / calls)
    rates = [value("specdec_acceptance_by_position", position=str(i)) for i in range(GAMMA)]
    assert all(0 <= r <= 1 for r in rates)
    assert value("specdec_queue_length") == 0
    assert value("specdec_time_to_first_token_seconds_count") >= 1


INVALID = ("specdec_requests_total", (("outcome", "invalid"),))


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str, headers: dict | None = None) -> dict[str, object]:
    """Metric families by name, parsed by prometheus_client."""
    text = httpx.get(f"{url}/metrics", headers=headers).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def histogram(families: dict, name: str) -> tuple[float, float]:
    """(count, sum) of an unlabelled histogram; its buckets must be cumulative."""
    family = families[name]
    assert family.type == "histogram"
    samples = {s.name: s for s in family.samples if s.name != f"{name}_bucket"}
    buckets = [s.value for s in family.samples if s.name == f"{name}_bucket"]
    assert buckets == sorted(buckets) and buckets[-1] == samples[f"{name}_count"].value
    return samples[f"{name}_count"].value, samples[f"{name}_sum"].value


LATENCIES = ["specdec_time_to_first_token_seconds", "specdec_inter_token_latency_seconds",
             "specdec_e2e_request_latency_seconds", "specdec_request_queue_time_seconds",
             "specdec_request_time_per_output_token_seconds"]


def test_latency_histograms(url, client) -> None:
    before = {name: histogram(scrape(url), name) for name in LATENCIES}
    got = client.completions.create(model="tiny", prompt="latency", max_tokens=16,
                                    temperature=0, extra_body={"ignore_eos": True})
    after = {name: histogram(scrape(url), name) for name in LATENCIES}
    delta = {name: (after[name][0] - before[name][0], after[name][1] - before[name][1])
             for name in LATENCIES}
    steps = got.model_extra["speculative"]["target_calls"]
    assert 1 < steps < 16  # several steps, some of several tokens
    ttft, itl, e2e, queue, tpot = (delta[name] for name in LATENCIES)
    assert ttft[0] == e2e[0] == queue[0] == tpot[0] == 1
    assert itl[0] == steps - 1  # one observation per step after the first, as vLLM
    assert 0 <= queue[1] <= ttft[1] < e2e[1]
    assert e2e[1] == pytest.approx(ttft[1] + itl[1], abs=0.05)
    assert tpot[1] == pytest.approx((e2e[1] - ttft[1]) / 15, rel=0.2, abs=1e-3)


@pytest.mark.parametrize("stream", [False, True])
def test_completion_echo_sends_the_prompt_first(client, library, stream: bool) -> None:
    want = library.generate("Echo me", SamplingParams(temperature=0, max_new_tokens=8)).text
    got = client.completions.create(model="tiny", prompt="Echo me", max_tokens=8,
                                    temperature=0, echo=True, stream=stream)
    text = "".join(c.choices[0].text for c in got) if stream else got.choices[0].text
    assert text == "Echo me" + want
    ids = library.tokenizer("Echo me").input_ids
    got = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0,
                                    echo=True)
    assert got.choices[0].text == "Echo me" + want


def test_penalties_equal_the_library(client, library) -> None:
    bias = {str(library.tokenizer.convert_tokens_to_ids("e")): 2.0}
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True,
                            repetition_penalty=1.3, frequency_penalty=0.5,
                            presence_penalty=0.4, logit_bias={int(k): v for k, v in bias.items()})
    want = library.generate("Penalize", params).text
    assert want != library.generate("Penalize", SamplingParams(
        temperature=0, max_new_tokens=24, ignore_eos=True)).text
    got = client.completions.create(
        model="tiny", prompt="Penalize", max_tokens=24, temperature=0, frequency_penalty=0.5,
        presence_penalty=0.4, logit_bias=bias,
        extra_body={"ignore_eos": True, "repetition_penalty": 1.3})
    assert got.choices[0].text == want


def library_logprobs(library, prompt, top: int, n: int) -> list:
    params = SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True, logprobs=top)
    return [lp for step in library.stream(prompt, params) for lp in step.logprobs]


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_equal_the_library(client, library, stream: bool) -> None:
    want = library_logprobs(library, "Logprobs", 3, 10)
    got = client.completions.create(model="tiny", prompt="Logprobs", max_tokens=10,
                                    temperature=0, logprobs=3, stream=stream,
                                    extra_body={"ignore_eos": True})
    if stream:
        parts = [c.choices[0].logprobs for c in got if c.choices[0].logprobs]
        tokens = [t for p in parts for t in p.tokens]
        values = [v for p in parts for v in p.token_logprobs]
        tops = [d for p in parts for d in p.top_logprobs]
        offsets = [o for p in parts for o in p.text_offset]
    else:
        lp = got.choices[0].logprobs
        tokens, values, tops, offsets = (lp.tokens, lp.token_logprobs, lp.top_logprobs,
                                         lp.text_offset)
    decode = library.tokenizer.decode
    assert tokens == [decode([w.token]) for w in want]
    assert values == pytest.approx([w.logprob for w in want], abs=1e-5)
    for top, w in zip(tops, want, strict=True):
        expected = {decode([t]): v for t, v in w.top} | {decode([w.token]): w.logprob}
        assert top == pytest.approx(expected, abs=1e-5)
    ids = [w.token for w in want]  # where each token's text starts in the output text
    assert offsets == [len(decode(ids[:i], skip_special_tokens=True)) for i in range(10)]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_equal_the_library(client, library, stream: bool) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    want = library_logprobs(library, chat_ids(library, messages), 2, 8)
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                         temperature=0, logprobs=True, top_logprobs=2,
                                         stream=stream, extra_body={"ignore_eos": True})
    if stream:
        content = [e for c in got if c.choices and c.choices[0].logprobs
                   for e in c.choices[0].logprobs.content]
    else:
        content = got.choices[0].logprobs.content
    decode = library.tokenizer.decode
    assert [e.token for e in content] == [decode([w.token]) for w in want]
    assert [e.logprob for e in content] == pytest.approx([w.logprob for w in want], abs=1e-5)
    for entry, w in zip(content, want, strict=True):
        assert [t.token for t in entry.top_logprobs] == [decode([t]) for t, _ in w.top]
        assert entry.bytes == list(entry.token.encode())


EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, timeout=120,
                          capture_output=True, text=True)


def test_examples_run(url, pair, library) -> None:
    done = run_example("stream_client.py", "Hello", "--url", f"{url}/v1", "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    want = library.generate(chat_ids(library, [{"role": "user", "content": "Hello"}]),
                            SamplingParams(temperature=0, max_new_tokens=8)).text
    assert done.stdout == want + "\n" and "target calls" in done.stderr
    done = run_example("logprobs_client.py", "Hi", "--url", f"{url}/v1", "--max-tokens", "4")
    assert done.returncode == 0, done.stderr
    assert "alternatives" in done.stdout and "mean logprob" in done.stderr
    done = run_example("library.py", "--target", str(pair[0]), "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    assert "step 0: accepted" in done.stdout and "target calls" in done.stdout
