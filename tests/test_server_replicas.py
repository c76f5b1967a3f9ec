"""Replicas on a real local Ray cluster (started once for the module): the same API, exact.

Two replicas of a tiny target + drafter pair (float32, greedy): concurrent streaming clients
get exactly plain greedy decoding's text and land on both replicas; a replica whose process
is killed mid-stream gives its clients an error event (never silence) while the other's
complete, and Ray brings it back; past max_ongoing_requests and the proxy's queue, a request
gets 503 with OpenAI's error body.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import ray
import torch
from ray import serve
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from server_support import char_tokenizer, free_port
from specdec import SamplingParams, SpeculativeDecoder
from specdec.cli.serve_options import build_parser
from specdec.cli.serve_replicas import ServerBuilder, replica_args, replica_options
from specdec.models import wrap
from specdec.server.replica_proxy import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from specdec.server.replicas import REPLICA_HEADER, deployment
from tiny import perturbed

CLIENTS, MAX_TOKENS = 8, 16
ONGOING = 8  # per replica: the clients of one round fit in either replica
# the proxy's queue: Ray counts a request there until a replica is picked for it, so a burst of
# CLIENTS at once needs this much room even with free replicas
QUEUE = CLIENTS
LONG = 15000  # tokens: minutes of generation, never finishes inside a test
APP = "specdec"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny llama with a 16k context (so one stream can run for minutes) and a noisy copy
    as its drafter."""
    root = tmp_path_factory.mktemp("replica_models")
    tokenizer = char_tokenizer(chat_template=None)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=16384, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, tie_word_embeddings=False)
    target = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # sharper logits: greedy choices far from ties
        target.get_output_embeddings().weight.mul_(4.0)
    paths = root / "target", root / "draft"
    for path, model in zip(paths, (target, perturbed(target, 0.3)), strict=True):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with Serve's proxy on a free port; yields the base URL."""
    os.environ[PROXY_CALLBACK_ENV] = PROXY_CALLBACK  # the proxy inherits it
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    logging_config={"log_level": "WARNING"})
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()
        os.environ.pop(PROXY_CALLBACK_ENV, None)


def deploy(models, name: str, prefix: str, *flags: str):
    """Deploy `specdec serve --replicas ... FLAGS` as the command builds it (Python API)."""
    target, draft = models
    args = build_parser().parse_args(
        ["--target", str(target), "--draft", str(draft), "--gamma", "3", "--dtype", "float32",
         "--threads", "1", "--served-model-name", "tiny", "--max-tokens-limit", str(LONG),
         "--log-level", "warning", *flags])
    options = replica_options(args)
    build = ServerBuilder(replica_args(args, options.max_ongoing_requests))
    serve.run(deployment(build, options), name=name, route_prefix=prefix)


@pytest.fixture(scope="module")
def pair(cluster, models) -> str:
    deploy(models, APP, "/", "--replicas", "2", "--max-ongoing-requests", str(ONGOING),
           "--max-queue", str(QUEUE))
    return cluster


def references(target: Path, prompts: list[str]) -> dict[str, str]:
    """prompt -> text of plain greedy decoding by the library (no server, no drafter)."""
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    plain = SpeculativeDecoder(wrap(model, tokenizer), None)
    params = SamplingParams(temperature=0, max_new_tokens=MAX_TOKENS)
    return {p: plain.generate(p, params).text for p in prompts}


def stream(url: str, prompt: str, max_tokens: int, out: dict,
           started: threading.Event | None = None, cancel: threading.Event | None = None,
           ) -> dict:
    """POST a streamed completion; out gets the status, the replica and the data lines.
    `started` is set after 5 events; once `cancel` is set, the client goes away."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": max_tokens == LONG, "stream": True}
    try:
        with httpx.Client(timeout=120) as client, \
                client.stream("POST", f"{url}/v1/completions", json=body) as response:
            out["status"] = response.status_code
            out["replica"] = response.headers.get(REPLICA_HEADER)
            if response.status_code != 200:
                out["body"] = json.loads(response.read())
                return out
            lines = out.setdefault("lines", [])
            for line in response.iter_lines():
                if line.startswith("data:"):
                    lines.append(line[5:].strip())
                    if started is not None and len(lines) >= 5:
                        started.set()
                    if cancel is not None and cancel.is_set():
                        return out
    except httpx.HTTPError as error:  # no last message: the tests fail on it
        out["error"] = repr(error)
    return out


def events(out: dict) -> list[dict]:
    return [json.loads(line) for line in out["lines"] if line != "[DONE]"]


def text_of(out: dict) -> str:
    return "".join(e["choices"][0]["text"] for e in events(out) if "choices" in e)


def test_two_replicas_give_single_process_text_to_concurrent_clients(pair, models):
    prompts = [f"Client {i} asks: {chr(65 + i) * (1 + i % 4)}?" for i in range(CLIENTS)]
    want = references(models[0], prompts)
    replicas: set[str] = set()
    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(2):  # two rounds: the router spreads them over both replicas
            outs = list(pool.map(lambda p: stream(pair, p, MAX_TOKENS, {}), prompts))
            for prompt, out in zip(prompts, outs, strict=True):
                assert out.get("status") == 200 and "error" not in out, out
                assert out["lines"][-1] == "[DONE]"
                assert events(out)[-1]["choices"][0]["finish_reason"] in ("stop", "length")
                assert text_of(out) == want[prompt], prompt
                replicas.add(out["replica"])
    assert len(replicas) == 2, replicas

    health = httpx.get(f"{pair}/health").json()
    assert health["status"] == "ok" and health["replicas"] == 2, health
    # /metrics from any replica labels every replica's samples; the posts lag <= 1 s
    deadline = time.monotonic() + 15
    while True:
        text = httpx.get(f"{pair}/metrics").text
        done = {r: _sample(text, "specdec_requests_total", outcome="stop", replica=r)
                + _sample(text, "specdec_requests_total", outcome="length", replica=r)
                for r in replicas}
        if sum(done.values()) == 2 * CLIENTS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(done.values()) == 2 * CLIENTS and all(done.values()), done
    assert _sample(text, "specdec_replicas") == 2


def test_past_max_ongoing_requests_and_the_queue_a_request_gets_503(pair):
    """2 replicas x 8 ongoing are full and 8 requests wait in the proxy's queue: the next
    gets 503 in OpenAI's format; when clients leave, the waiting ones are served."""
    cancel = threading.Event()
    running = [({}, threading.Event()) for _ in range(2 * ONGOING)]
    threads = [threading.Thread(target=stream, args=(pair, f"r{i}", LONG, out, started, cancel))
               for i, (out, started) in enumerate(running)]
    for first in (0, ONGOING):  # bursts of 8: what the queue takes
        for thread in threads[first:first + ONGOING]:
            thread.start()
        for out, started in running[first:first + ONGOING]:
            assert started.wait(90), out
    late = [{} for _ in range(QUEUE + 1)]  # QUEUE wait in the proxy, the last finds it full
    for i, out in enumerate(late):
        threads.append(threading.Thread(target=stream, args=(pair, f"late {i}", 4, out)))
        threads[-1].start()
        time.sleep(0.3)
    try:
        deadline = time.monotonic() + 30
        while not any(out.get("status") == 503 for out in late):
            assert time.monotonic() < deadline, late
            time.sleep(0.2)
        time.sleep(1)
        refused = [out for out in late if out.get("status") == 503]
        assert len(refused) == 1, refused
        error = refused[0]["body"]["error"]
        assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
        assert "max_ongoing_requests" in error["message"]
        assert all(not out.get("lines") for out in late)  # the others still wait
    finally:
        cancel.set()  # the long streams' clients go away: their replicas cancel them
        for thread in threads:
            thread.join(timeout=60)
    for out in late:
        if out is not refused[0]:  # served once there was room
            assert out["status"] == 200 and out["lines"][-1] == "[DONE]", out


def test_a_killed_replica_gives_its_streams_an_error_and_comes_back(pair, models):
    long: dict = {}
    started = threading.Event()
    threads = [threading.Thread(target=stream, args=(pair, "go", LONG, long, started))]
    others = [({}, threading.Event()) for _ in range(3)]
    threads += [threading.Thread(target=stream, args=(pair, f"x{i}", LONG, out, going))
                for i, (out, going) in enumerate(others)]
    for thread in threads:
        thread.start()
    for event, out in [(started, long), *((going, out) for out, going in others)]:
        assert event.wait(60), out
    victim = long["replica"]
    actor = ray.get_actor(f"SERVE_REPLICA::{APP}#{APP}#{victim}", namespace="serve")
    pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
    os.kill(pid, signal.SIGKILL)

    threads[0].join(timeout=60)
    assert not threads[0].is_alive()
    # the client of the killed replica: an error event and [DONE], not silence
    assert "error" not in long, long["error"]
    assert long["lines"][-1] == "[DONE]"
    assert events(long)[-1]["error"]["code"] == "replica_lost"
    # every other stream on it ends the same way; those on the live replica keep streaming
    time.sleep(1)
    for out, _ in others:
        if out.get("replica") == victim:
            assert events(out)[-1]["error"]["code"] == "replica_lost", out["lines"][-3:]
        else:
            assert out.get("status") == 200 and out["lines"][-1] != "[DONE]", out

    # Ray restarts it: new requests are answered by two live replicas again, one of them new
    deadline = time.monotonic() + 180
    seen: set[str] = set()
    while len(seen - {victim}) < 2:
        assert time.monotonic() < deadline, f"not recovered: {seen}"
        out = stream(pair, "hello", 4, {})
        if out.get("status") == 200 and out["lines"][-1] == "[DONE]" and \
                "error" not in events(out)[-1]:
            seen.add(out["replica"])
        time.sleep(0.2)
    assert victim not in seen
    stop(APP)
    for thread in threads:
        thread.join(timeout=60)
    for out, _ in others:  # stopped by the drain: a last message too
        assert out["lines"][-1] == "[DONE]" and "error" in events(out)[-1], out["lines"][-3:]


def stop(app: str) -> None:
    """Drain the app's replicas (running streams end with an error event), then delete it."""
    serve.get_deployment_handle("SpecdecBoard", app_name=app).drain.remote(0).result()
    time.sleep(2.5)  # the replicas read the order within a second
    serve.delete(app)


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name{labels}` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0
