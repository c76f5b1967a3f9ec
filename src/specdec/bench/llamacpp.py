"""llama.cpp (llama-cpp-python, optional) on the GGUF file, plain and with prompt lookup."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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
                     lookup_tokens: int = 10, plain_buffers: bool = False) -> list[Method]:
    """Plain and prompt-lookup methods on the same GGUF (in its native quantization).

    llama.cpp runs as its users run it: its default buffer types (repacked weights where the
    CPU has kernels for them). plain_buffers=True switches them off, for a machine where they
    fail (the report then says so).
    """
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    def load(draft=None) -> Llama:
        with _plain_cpu_buffers() if plain_buffers else nullcontext():
            # with a draft model, Llama keeps every position's logits (it verifies drafts from
            # them) but sizes its `scores` buffer from the logits_all argument: n_batch (512)
            # rows unless logits_all=True, so every prompt over 512 tokens failed with "could
            # not broadcast input array from shape (R * n_vocab,) into shape (0,)". Costs
            # n_ctx x n_vocab float32 of address space, touched for prompt + output rows.
            return Llama(model_path=str(gguf), n_ctx=context, n_threads=threads,
                         n_threads_batch=threads, draft_model=draft, verbose=False, seed=0,
                         logits_all=draft is not None)

    plain = load()
    lookup = load(LlamaPromptLookupDecoding(num_pred_tokens=lookup_tokens))
    return [Method("llama.cpp plain", "llama.cpp", _runner(plain)),
            Method("llama.cpp prompt lookup", "llama.cpp", _runner(lookup), "prompt lookup")]


@contextmanager
def _plain_cpu_buffers() -> Iterator[None]:
    """Load without ggml's extra buffer types (AMX / repacked weights): only for a machine
    where they fail (one 2026 VM reported AMX that it would not run: SIGILL)."""
    import llama_cpp.llama_cpp as bindings  # what Llama.__init__ calls

    default = bindings.llama_model_default_params

    def without_extra_buffers():
        params = default()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        bindings.llama_model_default_params = default


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
