"""Continuous batching in `specdec serve`: 16 concurrent streams in one batch, each its own.

Different prompts and lengths, greedy, float32: every client gets exactly the text the
library gives that prompt alone; a client that disconnects mid-stream leaves the batch
without disturbing the others; /metrics shows steps that carried several requests.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from server_support import save_tiny_pair, serve
from specdec import SamplingParams, SpeculativeDecoder
from specdec.models import wrap
from test_server_limits import metric, wait_idle

CLIENTS = 16


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("batch_models"))


def alone(target_dir, jobs: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """(text, finish_reason) of each (prompt, max_tokens) decoded alone (plain greedy)."""
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    plain = SpeculativeDecoder(wrap(model, tokenizer), None)
    out = []
    for prompt, max_tokens in jobs:
        result = plain.generate(prompt, SamplingParams(temperature=0, max_new_tokens=max_tokens))
        out.append((result.text, result.finish_reason))
    return out


def stream(client: openai.OpenAI, prompt: str, max_tokens: int) -> tuple[str, str | None]:
    text, reason = [], None
    for chunk in client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens,
                                           temperature=0, stream=True):
        text.append(chunk.choices[0].text)
        reason = chunk.choices[0].finish_reason or reason
    return "".join(text), reason


def quitter(url: str, left: threading.Event) -> None:
    """A long stream that hangs up after a few chunks."""
    body = {"model": "tiny", "prompt": "I will leave early", "max_tokens": 400,
            "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client, \
            client.stream("POST", f"{url}/v1/completions", json=body) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i >= 6:
                break
    left.set()


def test_sixteen_streams_in_one_batch_each_get_their_own_text(pair) -> None:
    target, draft = pair
    jobs = [(f"Client {i}: {'xyz'[i % 3] * (1 + 3 * i)} then?", 4 + 5 * (i % 6))
            for i in range(CLIENTS)]
    want = alone(target, jobs)
    with serve("--target", str(target), "--draft", str(draft), "--gamma", "3",
               "--dtype", "float32", "--threads", "1", "--served-model-name", "tiny",
               "--max-batch-size", str(CLIENTS)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                               timeout=120)
        left = threading.Event()
        leaving = threading.Thread(target=quitter, args=(url, left))
        leaving.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            got = list(pool.map(lambda job: stream(client, *job), jobs))
        leaving.join(60)
        assert left.is_set()
        assert got == want
        # the engine drops a hung-up stream at its next step: read the counts once it has
        wait_idle(url)
        # steps carried several requests at once
        steps = metric(url, "specdec_batch_size_count")
        rows = metric(url, "specdec_batch_size_sum")
        assert rows / steps > 2, (rows, steps)
        # the quitter was cancelled, not run to its 400 tokens
        assert metric(url, "specdec_requests_total", outcome="cancelled") == 1
        assert metric(url, "specdec_generated_tokens_total") < sum(n for _, n in jobs) + 400


def test_cpu_server_picks_float32_when_it_batches_without_packed_bf16() -> None:
    from specdec.cli.serve_build import serve_dtype

    no_packing = "this torch build has no oneDNN (mkldnn)"
    assert serve_dtype("auto", "cpu", 8, no_packing) == "float32"  # F.linear bf16: per row
    assert serve_dtype("auto", "cpu", 8, None) is None  # prepacked bf16 batches
    assert serve_dtype("auto", "cpu", 1, no_packing) is None  # load_model's choice
    assert serve_dtype("auto", "cuda", 8, no_packing) is None
    assert serve_dtype("bfloat16", "cpu", 8, no_packing) == "bfloat16"  # the user's choice


def test_suffix_trees_in_the_batch_give_plain_greedy_text(pair) -> None:
    """`--draft suffix`: concurrent requests share steps that verify each row's suffix tree
    (step.py); every client gets plain greedy's text, with drafts accepted."""
    target, _ = pair
    jobs = [(f"{'abcab' * (2 + i)} {i}: abcab", 24 + 4 * i) for i in range(4)]
    want = alone(target, jobs)
    with serve("--target", str(target), "--draft", "suffix", "--gamma", "6",
               "--dtype", "float32", "--threads", "1", "--served-model-name", "tiny",
               "--max-batch-size", "4") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                               timeout=120)
        with ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(lambda job: stream(client, *job), jobs))
        assert got == want
        assert metric(url, "specdec_accepted_tokens_total") > 0
        assert metric(url, "specdec_batch_size_sum") > metric(url, "specdec_batch_size_count")
