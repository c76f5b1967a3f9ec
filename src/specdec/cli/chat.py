"""`specdec chat`: an interactive conversation through the model's chat template.

Each line you type is a user turn; the reply streams as tokens are accepted. The whole
history (with the --system prompt) is rendered with the chat template at every turn, so the
model sees the conversation. Commands: /reset forgets the history, /exit (or end of input)
quits. A line ending with a backslash continues on the next line. Ctrl-C stops a reply.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from specdec.cli.generate import add_sampling_options, sampling_params, stop_strings
from specdec.cli.loading import load_decoder, model_options
from specdec.cli.options import add_model_options, runtime_options
from specdec.cli.render import Outcome, drafter_name, finish_line, renderer, summary
from specdec.errors import UsageError
from specdec.prompts import chat_ids
from specdec.sampling import SamplingParams

if TYPE_CHECKING:
    from specdec.decoding import SpeculativeDecoder

MAX_LINE_CHARS = 1 << 20  # one user turn
HELP = "[/reset forgets the conversation, /exit quits; end a line with \\ to continue it]"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specdec chat", description=__doc__)
    add_model_options(p)
    add_sampling_options(p)
    p.add_argument("--stats", action="store_true",
                   help="print why each reply stopped and its stats on stderr")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    params, stops = sampling_params(args), stop_strings(args.stop)
    decoder = load_decoder(model_options(args), runtime_options(args))
    if not getattr(decoder.tokenizer, "chat_template", None):
        raise UsageError(f"{args.target} has no chat template; use `specdec generate`")
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        print(HELP, file=sys.stderr)
    Conversation(decoder, params, stops, args.system, args.show, args.stats).loop(interactive)
    return 0


class Conversation:
    """The history and one reply per user turn."""

    def __init__(self, decoder: SpeculativeDecoder, params: SamplingParams, stops: list[str],
                 system: str | None, show: bool = False, stats: bool = False,
                 out: TextIO | None = None):
        self.decoder, self.params, self.stops = decoder, params, stops
        self.system, self.show, self.stats = system, show, stats
        self.out = out or sys.stdout
        self.history: list[dict] = []

    def loop(self, interactive: bool) -> None:
        while (line := read_turn(interactive)) is not None:
            command = line.strip()
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                self.history = []
                print("[conversation reset]", file=sys.stderr)
            elif command:
                self.turn(line)

    def turn(self, text: str) -> Outcome | None:
        """Answer one user message; the reply joins the history (None if interrupted)."""
        self.history.append({"role": "user", "content": text})
        try:
            ids = self._prompt()
        except ValueError as error:  # e.g. a template that refuses a system message
            print(f"[{error}]", file=sys.stderr)
            ids = None
        if ids is None:
            self.history.pop()
            return None
        draw = renderer(self.out, self.decoder.tokenizer, self.stops, self.show)
        try:
            outcome = draw.run(self.decoder.stream(ids, self.params))
        except KeyboardInterrupt:
            self.out.write("\n")
            print("[reply interrupted; not kept in the conversation]", file=sys.stderr)
            self.history.pop()
            return None
        self.history.append({"role": "assistant", "content": outcome.text})
        if self.stats or outcome.finish_reason == "length":  # a cut reply is worth a word
            print(finish_line(outcome, self.decoder.tokenizer, self.params.max_new_tokens),
                  file=sys.stderr)
        if self.stats:
            print(summary(outcome.stats, drafter_name(self.decoder)), file=sys.stderr)
        return outcome

    def _prompt(self) -> list[int] | None:
        """The conversation's token ids; the oldest turns go when it outgrows the context."""
        window = self.decoder.target.max_length
        while True:
            ids = chat_ids(self.decoder.tokenizer, self._messages())
            if window is None or len(ids) + self.params.max_new_tokens <= window:
                return ids
            if len(self.history) <= 1:
                print(f"[this message is {len(ids)} tokens with the template; with "
                      f"--max-new-tokens {self.params.max_new_tokens} it does not fit the "
                      f"context of {window} tokens]", file=sys.stderr)
                return None
            # a user turn and its reply, so the roles keep alternating
            del self.history[:2]
            print("[oldest turn dropped to fit the context]", file=sys.stderr)

    def _messages(self) -> list[dict]:
        head = [] if self.system is None else [{"role": "system", "content": self.system}]
        return head + self.history


def read_turn(interactive: bool) -> str | None:
    """One user turn (continued over lines ending in a backslash); None at end of input."""
    lines: list[str] = []
    while True:
        if interactive:
            try:
                line: str | None = input("> " if not lines else ". ")
            except EOFError:
                line = None
        else:
            raw = sys.stdin.readline(MAX_LINE_CHARS + 1)
            line = raw.removesuffix("\n") if raw else None  # "" only at end of input
        if line is None:
            return "\n".join(lines) if lines else None
        if len(line) > MAX_LINE_CHARS:
            print(f"[a line is at most {MAX_LINE_CHARS} characters; ignored]", file=sys.stderr)
            lines = []
            _skip_rest_of_line(interactive)
            continue
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def _skip_rest_of_line(interactive: bool) -> None:
    while not interactive and (raw := sys.stdin.readline(MAX_LINE_CHARS)) \
            and not raw.endswith("\n"):
        pass
