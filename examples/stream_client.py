"""Stream a chat reply from `specdec serve` with the official openai client.

    specdec serve &                                   # in another terminal
    python examples/stream_client.py "Write a Python function that reverses a string."

The text is printed as the server streams it (one chunk per token, an accepted block of
drafts arrives at once), then the request's speculative counters from the last chunk.
"""

from __future__ import annotations

import argparse
import os
import sys

from openai import OpenAI


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default=None, help="default: the server's only model")
    parser.add_argument("--system", default=None)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()

    # the server's --api-key, if it has one
    client = OpenAI(base_url=args.url, api_key=os.environ.get("SPECDEC_API_KEY", "unused"))
    model = args.model or client.models.list().data[0].id
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=args.max_tokens,
        temperature=args.temperature, stream=True, stream_options={"include_usage": True})
    finish, speculative = None, None
    for chunk in stream:
        for choice in chunk.choices:
            print(choice.delta.content or "", end="", flush=True)
            finish = choice.finish_reason or finish
        speculative = (chunk.model_extra or {}).get("speculative") or speculative
    print()
    if speculative:
        print(f"[finish: {finish}; {speculative['generated']} tokens, "
              f"{speculative['target_calls']} target calls, "
              f"{speculative['acceptance_rate']:.0%} of drafts accepted]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
