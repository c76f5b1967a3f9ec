"""llama.cpp (llama-cpp-python, optional) on the GGUF file, plain and with prompt lookup."""

from __future__ import annotations

import time
from pathlib import Path

from specdec.bench.methods import Method, Outcome
from specdec.sampling import SamplingParams


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def llamacpp_methods(gguf: str | Path, threads: int, context: int = 4096,
                     lookup_tokens: int = 10) -> list[Method]:
    """Plain and prompt-lookup methods on the same GGUF (in its native quantization)."""
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    def load(draft=None) -> Llama:
        return Llama(model_path=str(gguf), n_ctx=context, n_threads=threads,
                     n_threads_batch=threads, draft_model=draft, verbose=False, seed=0)

    plain = load()
    lookup = load(LlamaPromptLookupDecoding(num_pred_tokens=lookup_tokens))
    return [Method("llama.cpp plain", "llama.cpp", _runner(plain)),
            Method("llama.cpp prompt lookup", "llama.cpp", _runner(lookup), "prompt lookup")]


def _runner(llm):
    def run(prompt: list[int], params: SamplingParams) -> Outcome:
        llm.reset()  # no prefix reuse across prompts or methods: every method prefills
        if params.seed is not None:
            llm.set_seed(params.seed)
        eos = llm.token_eos()
        tokens: list[int] = []
        start = time.perf_counter()
        # temp 0 is greedy; otherwise pure temperature sampling like the other methods
        for token in llm.generate(prompt, temp=params.temperature, top_k=0, top_p=1.0,
                                  min_p=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if (token == eos and not params.ignore_eos) or len(tokens) >= params.max_new_tokens:
                break
        return Outcome(tokens, time.perf_counter() - start)

    return run
