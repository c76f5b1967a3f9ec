"""The llama.cpp methods against a stand-in for llama-cpp-python (not installed in CI).

The stand-in copies the two rules of llama-cpp-python (0.3.x, llama.py) that broke prompt
lookup on long prompts: a Llama with a draft model keeps every position's logits in `scores`,
and `scores` has n_ctx rows only when the constructor's logits_all argument is True (else
n_batch = 512 rows). Prompts over 512 tokens then failed with "could not broadcast input
array from shape (R * n_vocab,) into shape (0,)", as measured on the real library.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from specdec.bench import llamacpp
from specdec.sampling import SamplingParams

VOCAB = 8
N_BATCH = 512


class FakeLlama:
    made: list[FakeLlama] = []

    def __init__(self, model_path, n_ctx=512, n_threads=None, n_threads_batch=None,
                 draft_model=None, verbose=True, seed=0, logits_all=False, n_batch=N_BATCH):
        self.kwargs = {"n_ctx": n_ctx, "draft_model": draft_model, "logits_all": logits_all}
        self.n_batch = n_batch
        self.keep_all = logits_all if draft_model is None else True  # the library's rule
        self.scores = np.zeros((n_ctx if logits_all else n_batch, VOCAB), dtype=np.single)
        self.n_tokens = 0
        FakeLlama.made.append(self)

    def reset(self):
        self.n_tokens = 0

    def set_seed(self, seed):
        pass

    def token_eos(self):
        return VOCAB - 1

    def eval(self, tokens):  # as llama.py's eval stores logits
        for i in range(0, len(tokens), self.n_batch):
            batch = tokens[i:i + self.n_batch]
            n_past, n = self.n_tokens, len(batch)
            logits = np.ones(n * VOCAB if self.keep_all else VOCAB, dtype=np.single)
            if self.keep_all:
                self.scores[n_past:n_past + n, :].reshape(-1)[::] = logits
            self.n_tokens += n

    def generate(self, tokens, reset=True, **sampling):
        if reset:
            self.reset()
        while True:
            self.eval(tokens)
            yield 1
            tokens = [1]


@pytest.fixture
def fake_llama_cpp(monkeypatch):
    FakeLlama.made = []
    package = types.ModuleType("llama_cpp")
    package.Llama = FakeLlama
    speculative = types.ModuleType("llama_cpp.llama_speculative")
    speculative.LlamaPromptLookupDecoding = lambda num_pred_tokens: ("lookup", num_pred_tokens)
    bindings = types.ModuleType("llama_cpp.llama_cpp")
    bindings.llama_model_default_params = lambda: types.SimpleNamespace(use_extra_bufts=True)
    package.llama_speculative, package.llama_cpp = speculative, bindings
    for name, module in (("llama_cpp", package), ("llama_cpp.llama_speculative", speculative),
                         ("llama_cpp.llama_cpp", bindings)):
        monkeypatch.setitem(sys.modules, name, module)
    return FakeLlama


def test_prompt_lookup_runs_prompts_longer_than_a_batch(fake_llama_cpp):
    plain, lookup = llamacpp.llamacpp_methods("model.gguf", threads=1, context=2048)
    params = SamplingParams(temperature=0, max_new_tokens=4)
    prompt = [2] * (N_BATCH + 190)  # the failing shape: a second batch of 190 tokens
    for method in (plain, lookup):
        outcome = method.run(prompt, params)
        assert outcome.tokens == [1] * 4
    by_draft = {llm.kwargs["draft_model"] is not None: llm for llm in fake_llama_cpp.made}
    assert by_draft[True].kwargs["logits_all"] is True  # scores sized n_ctx, not n_batch
    # plain decoding never reads per-position logits: no n_ctx x n_vocab buffer for it
    assert by_draft[False].kwargs["logits_all"] is False


def test_stand_in_reproduces_the_reported_failure(fake_llama_cpp):
    """Without logits_all the stand-in fails as the real library did (so the test above
    would catch the bug coming back)."""
    llm = FakeLlama("model.gguf", n_ctx=2048, draft_model=object())
    with pytest.raises(ValueError, match=r"could not broadcast input array from shape "
                                         rf"\({190 * VOCAB},\) into shape \(0,\)"):
        llm.eval([2] * (N_BATCH + 190))
