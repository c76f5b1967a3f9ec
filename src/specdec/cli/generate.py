"""`specdec generate PROMPT`: speculative decoding from the command line, streamed as it goes.

Text goes to stdout as tokens are accepted; the stats summary goes to stderr. --show draws the
paper's Figure 1 live on a terminal; --json prints one object (text, tokens, stats) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from specdec.cli.options import add_runtime_arguments, runtime_options
from specdec.decoding import SpeculativeDecoder, StepEvent
from specdec.detokenize import TextStream
from specdec.drafters.factory import build_drafter, build_gamma, parse_draft
from specdec.sampling import SamplingParams
from specdec.stats import GenerationStats

DEFAULT_TARGET = "qwen2.5-coder-0.5b"
# prompt lookup costs ~nothing per draft, so any acceptance is profit (see README)
DEFAULT_DRAFTER = "ngram"
DEFAULT_GAMMA = "auto"
MAX_NEW_TOKENS = 1 << 16  # a bound even for models without a context limit

GREEN, RED, BLUE = "\x1b[32m", "\x1b[31m", "\x1b[34m"
STRIKE, RESET = "\x1b[9m", "\x1b[0m"
SAVE_CURSOR, RESTORE_AND_CLEAR = "\x1b7", "\x1b8\x1b[J"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specdec generate", description=__doc__)
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="registry name, transformers directory or .gguf "
                        f"(default {DEFAULT_TARGET})")
    p.add_argument("--draft", default=DEFAULT_DRAFTER,
                   help="drafter: none | ngram | ngram:MIN:MAX | unigram:FILE | bigram:FILE | "
                        "MODEL[@int8|@int4] | self[@int8|@int4][@vocab=N] | ngram+MODEL | "
                        f"ngram+self[@...] (default {DEFAULT_DRAFTER})")
    p.add_argument("--gamma", default=DEFAULT_GAMMA,
                   help=f"draft length per step: an integer or 'auto' (default {DEFAULT_GAMMA})")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default 0)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=256, help="default 256")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default random)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float32", "float16"),
                   help="weights dtype (default bfloat16 where the CPU supports it, else float32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    add_runtime_arguments(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--show", action="store_true",
                     help="color accepted drafts green, rejected red, corrections blue (tty only)")
    out.add_argument("--json", action="store_true",
                     help="print one JSON object: text, tokens, stats")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.prompt.strip():
        raise ValueError("the prompt is empty")
    if args.max_new_tokens > MAX_NEW_TOKENS:
        raise ValueError(f"--max-new-tokens must be <= {MAX_NEW_TOKENS}")
    # check every value before the (slow) model loading
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            min_p=args.min_p, seed=args.seed, max_new_tokens=args.max_new_tokens)
    gamma = build_gamma(args.gamma)
    parse_draft(args.draft)
    runtime = runtime_options(args)

    from specdec.models.loading import load_model, resolve_dtype, set_threads

    dtype = resolve_dtype(args.dtype, runtime.device)
    if args.threads is not None:
        set_threads(args.threads)

    def loader(spec: str) -> Any:
        if sys.stderr.isatty():
            print(f"loading {spec} ({str(dtype).removeprefix('torch.')}, {runtime.device}) ...",
                  file=sys.stderr)
        return load_model(spec, dtype=dtype, **runtime.load_kwargs())

    target = loader(args.target)
    drafter = build_drafter(args.draft, target, loader)
    decoder = SpeculativeDecoder(target, drafter, gamma)
    prompt = chat_prompt(target.tokenizer, args.prompt) if args.chat else args.prompt

    if args.json:
        result = decoder.generate(prompt, params)
        print(json.dumps({"text": result.text, "tokens": result.tokens,
                          "finish_reason": result.finish_reason, "target": args.target,
                          "draft": args.draft, "gamma": args.gamma,
                          "stats": result.stats.to_dict()}))
        stats = result.stats
    else:
        color = args.show and sys.stdout.isatty()
        render = Figure1(sys.stdout, target.tokenizer) if color else PlainText(
            sys.stdout, target.tokenizer)
        stats = render.run(decoder.stream(prompt, params))
    print(summary(stats, drafter.name if drafter is not None else "none",
                  compile_seconds(target, drafter)), file=sys.stderr)
    return 0


def chat_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of one user turn through the model's chat template, ready for the reply."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat: this model has no chat template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids  # the template has them


class PlainText:
    """Streams the accepted text as it grows."""

    def __init__(self, out: TextIO, tokenizer: Any):
        self.out = out
        self.text = TextStream(tokenizer)

    def run(self, events: Any) -> GenerationStats:
        stats = GenerationStats()
        for event in events:
            self.step(event)
            self.out.flush()
            stats = event.stats
        self.finish()
        return stats

    def step(self, event: StepEvent) -> None:
        self.out.write(self.text.push(event.tokens))

    def finish(self) -> None:
        self.out.write("\n")
        self.out.flush()


class Figure1(PlainText):
    """The paper's Figure 1, live: accepted drafts green, corrections and bonus tokens blue.

    Rejected drafts stay on screen red and struck through while the next target call runs;
    then they are erased and the correction that replaced them is drawn.
    """

    def __init__(self, out: TextIO, tokenizer: Any):
        super().__init__(out, tokenizer)
        self.tokenizer = tokenizer
        self.correction: int | None = None  # drawn once the rejected drafts are erased

    def step(self, event: StepEvent) -> None:
        self._settle()
        self._paint(GREEN, self.text.push(event.accepted))
        if event.next_token is None:
            return
        if event.rejected and not event.finished:
            shown = self.tokenizer.decode(event.rejected, skip_special_tokens=True)
            # kept on one line, so that restoring the saved cursor erases exactly this
            self.out.write(SAVE_CURSOR)
            self._paint(RED + STRIKE, shown.replace("\n", "\u21b5"))
            self.correction = event.next_token
        else:
            self._paint(BLUE, self.text.push([event.next_token]))

    def finish(self) -> None:
        self._settle()
        super().finish()

    def _settle(self) -> None:
        if self.correction is not None:
            self.out.write(RESTORE_AND_CLEAR)
            self._paint(BLUE, self.text.push([self.correction]))
            self.correction = None

    def _paint(self, color: str, text: str) -> None:
        if text:
            self.out.write(f"{color}{text}{RESET}")


def compile_seconds(*models: Any) -> float:
    """Time spent compiling steps in these models (and a drafter's model), 0 when eager."""
    total = 0.0
    for model in models:
        total += getattr(model, "compile_s", 0.0) + getattr(getattr(model, "model", None),
                                                             "compile_s", 0.0)
    return total


def summary(stats: GenerationStats, drafter: str, compile_s: float = 0.0) -> str:
    """One line of the numbers that matter, for stderr."""
    line = (f"[{stats.generated} tokens in {stats.total_s:.2f}s, {stats.tokens_per_s:.1f} tok/s; "
            f"{stats.target_calls} target calls, {stats.tokens_per_call:.2f} tokens/call")
    if stats.drafted:
        line += (f"; drafter {drafter}: {stats.accepted}/{stats.drafted} drafts accepted "
                 f"({stats.acceptance_rate:.0%}), alpha {stats.alpha:.2f}")
    if compile_s:
        line += f"; compiling took {compile_s:.1f}s of that"
    return line + "]"
