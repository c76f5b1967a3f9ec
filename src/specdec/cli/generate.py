"""`specdec generate PROMPT`: speculative decoding from the command line, streamed as it goes.

The prompt is an argument, a file (-f FILE) or stdin (`-`). Text goes to stdout as tokens are
accepted; why generation stopped and the stats go to stderr. --show draws the paper's
Figure 1 live on a terminal; --json prints one object (text, tokens, stats) instead.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from specdec import prompts
from specdec.cli.constraint_options import add_constraint_options, constraint_from_args
from specdec.cli.loading import load_decoder, model_options
from specdec.cli.options import add_model_options, runtime_options
from specdec.cli.render import compile_seconds, drafter_name, finish_line, renderer, summary
from specdec.errors import UsageError
from specdec.machine import CpuMeter, starvation_warning
from specdec.sampling import SamplingParams

MAX_NEW_TOKENS = 1 << 16  # a bound even for models without a context limit
MAX_PROMPT_BYTES = 16 << 20  # a prompt file or stdin
MAX_STOPS, MAX_STOP_LENGTH = 32, 256
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """Sampling, length, stop strings and the system prompt (generate and chat)."""
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default 0)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=256, help="default 256")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default random)")
    p.add_argument("--coupled", action=argparse.BooleanOptionalAction, default=None,
                   help="seed-keyed noise: the same seed gives the same text whatever the "
                        "drafter and gamma (default: on with --seed; --no-coupled: Algorithm "
                        "1's rejection rule, a little more acceptance)")
    p.add_argument("--block-verification", action="store_true",
                   help="uncoupled sampling: verify each block of drafts jointly (block "
                        "verification, Sun et al. 2025: exact, at least Algorithm 1's "
                        "acceptance); a seed then keeps Algorithm 1's noise, not the coupled "
                        "rule's")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="divide the logits of tokens already in the prompt or output "
                        "(transformers' rule; 1 = off)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtract this times the count of each token in the output (0 = off)")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtract this from tokens present in the output (0 = off)")
    p.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS",
                   help="add BIAS (in [-100, 100]) to token ID's logit (repeatable)")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when the text contains STR (repeatable; \\n and \\t are newline "
                        "and tab); the text ends just before it")
    p.add_argument("--system", default=None, metavar="TEXT",
                   help="system prompt (implies the chat template)")
    p.add_argument("--show", action="store_true",
                   help="color accepted drafts green, rejected red, corrections blue (tty only)")
    add_constraint_options(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specdec generate", description=__doc__)
    p.add_argument("prompt", nargs="?", default=None,
                   help="the prompt text; `-` reads it from stdin")
    p.add_argument("-f", "--file", default=None, metavar="FILE",
                   help="read the prompt from FILE (`-` = stdin), as is")
    add_model_options(p)
    add_sampling_options(p)
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    p.add_argument("--echo", action="store_true",
                   help="print the prompt (as the model sees it) before the generated text")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: text, tokens, finish_reason, stats")
    p.add_argument("--logprobs", type=int, default=None, metavar="N",
                   help="with --json: each token's log-probability and its N most likely "
                        "alternatives (the target's own distribution)")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and args.show:
        parser.error("--json and --show do not go together")
    if args.logprobs is not None and not args.json:
        parser.error("--logprobs needs --json")
    prompt_text = read_prompt(args.prompt, args.file)
    # check every value before the (slow) model loading
    params, stops = sampling_params(args), stop_strings(args.stop)
    decoder = load_decoder(model_options(args), runtime_options(args))
    tokenizer = decoder.tokenizer
    prompt: str | list[int] = prompt_text
    if args.chat or args.system is not None:
        prompt_text, prompt = chat_prompt(tokenizer, chat_messages(args.system, prompt_text))

    out = io.StringIO() if args.json else sys.stdout
    if args.echo and not args.json:
        out.write(prompt_text)
    meter = CpuMeter()
    outcome = renderer(out, tokenizer, stops, args.show).run(decoder.stream(prompt, params))
    starved = starvation_warning(*meter.elapsed(), torch.get_num_threads()) \
        if decoder.target.device.type == "cpu" else None
    if args.json:
        report: dict[str, Any] = {
            "text": outcome.text, "tokens": outcome.tokens,
            "finish_reason": outcome.finish_reason, "stop_reason": outcome.stop_reason,
            "target": args.target, "draft": args.draft, "gamma": args.gamma,
            "stats": outcome.stats.to_dict()}
        if args.echo:
            report["prompt"] = prompt_text
        if outcome.logprobs is not None:
            report["logprobs"] = logprobs_report(outcome.logprobs, tokenizer)
        print(json.dumps(report))
    print(finish_line(outcome, tokenizer, params.max_new_tokens), file=sys.stderr)
    print(summary(outcome.stats, drafter_name(decoder),
                  compile_seconds(decoder.target, decoder.drafter)), file=sys.stderr)
    if starved:
        print(f"specdec: {starved}", file=sys.stderr)
    return 0


def read_prompt(prompt: str | None, file: str | None) -> str:
    """The prompt from the argument, a file or stdin (`-`); ValueError if none or empty."""
    if prompt is not None and file is not None:
        raise UsageError("give the prompt as an argument or with -f FILE, not both")
    if prompt is None and file is None:
        raise UsageError("no prompt: give it as an argument, with -f FILE, or `-` for stdin")
    if file is None and prompt != "-":
        text = prompt
    elif (file or prompt) == "-":
        text = _read_stdin()
    else:
        text = _read_file(Path(file))
    if not text.strip():
        raise UsageError("the prompt is empty")
    return text


def _read_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream (tests)
        return _bounded(sys.stdin.read(MAX_PROMPT_BYTES + 1).encode(), "stdin")
    return _bounded(stream.read(MAX_PROMPT_BYTES + 1), "stdin")


def _read_file(path: Path) -> str:
    if not path.is_file():
        raise UsageError(f"prompt file not found: {path}")
    with path.open("rb") as handle:
        return _bounded(handle.read(MAX_PROMPT_BYTES + 1), str(path))


def _bounded(data: bytes, where: str) -> str:
    if len(data) > MAX_PROMPT_BYTES:
        raise UsageError(f"the prompt from {where} is over {MAX_PROMPT_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the prompt from {where} is not UTF-8 text") from None


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    if args.max_new_tokens > MAX_NEW_TOKENS:
        raise UsageError(f"--max-new-tokens must be <= {MAX_NEW_TOKENS}")
    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        seed=args.seed, max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty, logit_bias=logit_bias(args.logit_bias),
        logprobs=getattr(args, "logprobs", None), coupled=args.coupled,
        block_verification=args.block_verification, constraint=constraint_from_args(args))


def logit_bias(values: list[str]) -> dict[int, float]:
    """--logit-bias ID=BIAS values as {id: bias}."""
    out = {}
    for value in values:
        token, sep, bias = value.partition("=")
        try:
            out[int(token)] = float(bias)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--logit-bias takes ID=BIAS (e.g. 13=-100), got {value!r}")
    return out


def logprobs_report(logprobs: list, tokenizer: Any) -> list[dict]:
    """JSON entries: token id and text, its logprob, the top alternatives."""
    def text(token: int) -> str:
        return tokenizer.decode([token]) if tokenizer is not None else ""

    return [{"token": lp.token, "text": text(lp.token), "logprob": lp.logprob,
             "top": [{"token": t, "text": text(t), "logprob": v} for t, v in lp.top]}
            for lp in logprobs]


def stop_strings(values: list[str]) -> list[str]:
    """--stop values with \\n, \\t, \\r and \\\\ read as escapes; bounded in number and size."""
    if len(values) > MAX_STOPS:
        raise UsageError(f"at most {MAX_STOPS} --stop strings")
    stops = [_unescape(v) for v in values]
    if any(not s or len(s) > MAX_STOP_LENGTH for s in stops):
        raise UsageError(f"--stop strings must have 1 to {MAX_STOP_LENGTH} characters")
    return stops


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPES:
            out.append(ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def chat_messages(system: str | None, prompt: str) -> list[dict]:
    head = [] if system is None else [{"role": "system", "content": system}]
    return [*head, {"role": "user", "content": prompt}]


def chat_prompt(tokenizer: Any, messages: list[dict]) -> tuple[str, list[int]]:
    """prompts.chat_prompt; a missing template is a user error (exit code 1)."""
    try:
        return prompts.chat_prompt(tokenizer, messages)
    except LookupError as error:
        raise UsageError(f"--chat/--system: {error}") from None
