"""Bounded load: 32 concurrent streaming clients x 3 rounds against one `specdec serve`.

Every response must be complete and its own: distinct prompts, greedy, each compared with
plain greedy decoding of the same prompt by the library (float32: token-identical).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from server_support import save_tiny_pair, serve
from specdec import SamplingParams, SpeculativeDecoder
from specdec.models import wrap

CLIENTS, ROUNDS, MAX_TOKENS = 32, 3, 12


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("load_models"))


def references(target_dir, prompts: list[str]) -> dict[str, tuple[str, str]]:
    """prompt -> (text, finish_reason) of plain greedy decoding."""
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    plain = SpeculativeDecoder(wrap(model, tokenizer), None)
    params = SamplingParams(temperature=0, max_new_tokens=MAX_TOKENS)
    return {p: (r.text, r.finish_reason) for p in prompts
            for r in [plain.generate(p, params)]}


def stream_one(client: openai.OpenAI, prompt: str) -> tuple[str, str | None, int]:
    text, reason, usage = [], None, -1
    for chunk in client.completions.create(model="tiny", prompt=prompt, max_tokens=MAX_TOKENS,
                                           temperature=0, stream=True):
        text.append(chunk.choices[0].text)
        reason = chunk.choices[0].finish_reason or reason
        usage = chunk.usage.completion_tokens if chunk.usage else usage
    return "".join(text), reason, usage


def test_concurrent_streaming_clients_each_get_their_own_complete_answer(pair) -> None:
    target, draft = pair
    prompts = [f"Request {i} asks: {chr(65 + i % 26) * (1 + i % 5)}?" for i in range(CLIENTS)]
    want = references(target, prompts)
    with serve("--target", str(target), "--draft", str(draft), "--gamma", "3",
               "--dtype", "float32", "--threads", "1", "--served-model-name", "tiny",
               "--max-queue", str(CLIENTS)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                               timeout=120)
        with ThreadPoolExecutor(CLIENTS) as pool:
            for _ in range(ROUNDS):
                results = list(pool.map(lambda p: stream_one(client, p), prompts))
                for prompt, (text, reason, usage) in zip(prompts, results, strict=True):
                    assert (text, reason) == want[prompt], prompt
                    assert 1 <= usage <= MAX_TOKENS
        health = client.with_options(max_retries=0).models.list()
        assert [m.id for m in health] == ["tiny"]
