"""Each generated token's log-probability and its likeliest alternatives, from `specdec serve`.

    specdec serve &
    python examples/logprobs_client.py "def fibonacci(n):" --top 3 --frequency-penalty 0.5

The log-probabilities are the target model's own distribution at each emitted token (taken
from the forward that verified the drafts), whatever the sampling settings.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from openai import OpenAI


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default=None, help="default: the server's only model")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--top", type=int, default=3, help="alternatives per token (<= 20)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    args = parser.parse_args()

    client = OpenAI(base_url=args.url, api_key=os.environ.get("SPECDEC_API_KEY", "unused"))
    model = args.model or client.models.list().data[0].id
    response = client.completions.create(
        model=model, prompt=args.prompt, max_tokens=args.max_tokens,
        temperature=args.temperature, logprobs=args.top,
        frequency_penalty=args.frequency_penalty,
        extra_body={"repetition_penalty": args.repetition_penalty})
    choice = response.choices[0]
    print(f"{args.prompt}\x1b[1m{choice.text}\x1b[0m\n")
    print(f"{'token':>16} {'logprob':>8} {'prob':>6}  alternatives")
    lp = choice.logprobs
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        others = ", ".join(f"{t!r} {math.exp(v):.2f}" for t, v in
                           sorted(top.items(), key=lambda item: -item[1]) if t != token)
        print(f"{token!r:>16} {value:8.3f} {math.exp(value):6.2f}  {others}")
    print(f"\nfinish: {choice.finish_reason}; mean logprob "
          f"{sum(lp.token_logprobs) / len(lp.token_logprobs):.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
