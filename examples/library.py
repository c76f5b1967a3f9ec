"""specdec as a Python library, without a server.

    python examples/library.py                         # Qwen2.5-Coder-0.5B (fetched once)
    python examples/library.py --target path/to/model  # any transformers directory or .gguf

Shows: a decoder with the prompt-lookup drafter and gamma picked online, greedy generation
with a repetition penalty, a seeded sample with stop strings and log-probabilities, and the
per-step events (the paper's Figure 1: accepted drafts, rejected drafts, the target's token).
"""

from __future__ import annotations

import argparse
import math
import sys

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.factory import build_drafter, build_gamma
from specdec.models import load_model
from specdec.stop import StoppingText


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--draft", default="ngram", help="none | ngram | MODEL | ngram+MODEL")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    target = load_model(args.target)  # dtype: bfloat16 where the CPU has it, else float32
    drafter = build_drafter(args.draft, target, load_model)
    decoder = SpeculativeDecoder(target, drafter, build_gamma("auto"))
    prompt = "def bubble_sort(items):\n"

    # 1. greedy with a repetition penalty: the output is what plain decoding would give
    greedy = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens,
                            repetition_penalty=1.1)
    result = decoder.generate(prompt, greedy)
    stats = result.stats
    print(prompt + result.text)
    print(f"[{result.finish_reason}: {stats.generated} tokens, {stats.target_calls} target "
          f"calls, {stats.acceptance_rate:.0%} of drafts accepted, prefill {stats.prefill_s:.2f}s"
          f", first token {stats.first_token_s:.2f}s, decode {stats.decode_tokens_per_s:.1f} "
          "tok/s]\n")

    # 2. a seeded sample that stops at a blank line, with each token's log-probability
    sample = SamplingParams(temperature=0.8, top_p=0.95, seed=0, logprobs=2,
                            max_new_tokens=args.max_new_tokens, frequency_penalty=0.3)
    text = StoppingText(decoder.tokenizer, stops=["\n\n"])
    logprobs = []
    for step in decoder.stream(prompt, sample):
        for token, logprob in zip(step.tokens, step.logprobs, strict=True):
            print(text.push(token), end="", flush=True)
            logprobs.append(logprob.logprob)
            if text.stopped:
                break
        if text.stopped:
            break
    print(text.flush())
    mean = sum(logprobs) / len(logprobs)
    print(f"[stopped by {text.stop_string!r}; {len(text.tokens)} tokens, mean logprob "
          f"{mean:.2f} (perplexity {math.exp(-mean):.2f})]\n")

    # 3. the Figure 1 events: what each target call kept, threw away and added
    decode = decoder.tokenizer.decode
    for i, step in enumerate(decoder.stream(prompt, SamplingParams(temperature=0,
                                                                   max_new_tokens=24))):
        print(f"step {i}: accepted {decode(step.accepted)!r}, rejected "
              f"{decode(step.rejected)!r}, {'bonus' if step.bonus else 'target'} "
              f"{decode([step.next_token]) if step.next_token is not None else None!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
