"""Terminal output of a generation: plain streamed text, the paper's Figure 1, the stats lines.

Both renderers cut the text at the first stop string (matched across token and block
boundaries, with the server's matcher) and return an Outcome: the text, the tokens up to the
one that completed the stop, why generation ended, and the decoder's stats.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TextIO

from specdec.sampling import TokenLogprob
from specdec.sequence import StepEvent
from specdec.stats import GenerationStats
from specdec.stop import StoppingText

if TYPE_CHECKING:  # the decoder pulls transformers in: imported when a model loads
    from specdec.decoding import SpeculativeDecoder

GREEN, RED, BLUE = "\x1b[32m", "\x1b[31m", "\x1b[34m"
STRIKE, RESET = "\x1b[9m", "\x1b[0m"
SAVE_CURSOR, RESTORE_AND_CLEAR = "\x1b7", "\x1b8\x1b[J"


@dataclass
class Outcome:
    """What one generation produced, as shown."""

    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (stop token or stop string) or "length"
    stop_reason: str | int | None  # the stop string, or the stop token id; None at length
    stats: GenerationStats
    logprobs: list[TokenLogprob] | None = None  # one per token, when asked for


class PlainText:
    """Streams the accepted text as it grows."""

    def __init__(self, out: TextIO, tokenizer: Any, stops: list[str] | tuple[str, ...] = ()):
        self.out = out
        self.text = StoppingText(tokenizer, stops)

    def run(self, events: Iterable[StepEvent]) -> Outcome:
        stats, reason = GenerationStats(), "length"
        logprobs: list[TokenLogprob] | None = None
        for event in events:
            stats = event.stats
            if event.logprobs is not None:
                logprobs = logprobs if logprobs is not None else []
                logprobs.extend(event.logprobs)
            self.step(event)
            self.out.flush()
            if self.text.stopped:
                reason = "stop"
                break
            if event.finished:
                reason = event.finish_reason or reason
                break
        close = getattr(events, "close", None)
        if close is not None:
            close()  # a stop string ends the decoder's generator early
        self.finish()
        tokens = self.text.tokens
        if self.text.stopped:
            stop_reason: str | int | None = self.text.stop_string
            stats = replace(stats, generated=len(tokens))  # count what is shown
        else:
            stop_reason = tokens[-1] if reason == "stop" and tokens else None
        if logprobs is not None:
            logprobs = logprobs[: len(tokens)]  # past a stop string nothing is shown
        return Outcome(self.text.output, tokens, reason, stop_reason, stats, logprobs)

    def step(self, event: StepEvent) -> None:
        self.out.write(self._push(event.tokens))

    def finish(self) -> None:
        self.out.write(self.text.flush() + "\n")
        self.out.flush()

    def _push(self, tokens: list[int]) -> str:
        return "".join(self.text.push(token) for token in tokens)


class Figure1(PlainText):
    """The paper's Figure 1, live: accepted drafts green, corrections and bonus tokens blue.

    Rejected drafts stay on screen red and struck through while the next target call runs;
    then they are erased and the correction that replaced them is drawn.
    """

    def __init__(self, out: TextIO, tokenizer: Any, stops: list[str] | tuple[str, ...] = ()):
        super().__init__(out, tokenizer, stops)
        self.tokenizer = tokenizer
        self.correction: int | None = None  # drawn once the rejected drafts are erased

    def step(self, event: StepEvent) -> None:
        self._settle()
        self._paint(GREEN, self._push(event.accepted))
        if event.next_token is None or self.text.stopped:
            return
        if event.rejected and not event.finished:
            shown = self.tokenizer.decode(event.rejected, skip_special_tokens=True)
            # kept on one line, so that restoring the saved cursor erases exactly this
            self.out.write(SAVE_CURSOR)
            self._paint(RED + STRIKE, shown.replace("\n", "\u21b5"))
            self.correction = event.next_token
        else:
            self._paint(BLUE, self._push([event.next_token]))

    def finish(self) -> None:
        self._settle()
        super().finish()

    def _settle(self) -> None:
        if self.correction is not None:
            self.out.write(RESTORE_AND_CLEAR)
            self._paint(BLUE, self._push([self.correction]))
            self.correction = None

    def _paint(self, color: str, text: str) -> None:
        if text:
            self.out.write(f"{color}{text}{RESET}")


def renderer(out: TextIO, tokenizer: Any, stops: list[str], show: bool) -> PlainText:
    """Figure 1 when asked for and out is a terminal, else plain text."""
    color = show and out.isatty()
    return (Figure1 if color else PlainText)(out, tokenizer, stops)


def finish_line(outcome: Outcome, tokenizer: Any, max_new_tokens: int) -> str:
    """Why generation ended, in words."""
    if outcome.finish_reason == "length":
        return f"[stopped: length, {max_new_tokens} new tokens (--max-new-tokens)]"
    if isinstance(outcome.stop_reason, str):
        return f"[stopped: stop string {outcome.stop_reason!r}]"
    token = outcome.stop_reason
    if token is not None and tokenizer is not None:
        token = tokenizer.convert_ids_to_tokens(token)
    return f"[stopped: end-of-sequence token {token!r}]"


def compile_seconds(*models: Any) -> float:
    """Time spent compiling steps in these models (and a drafter's model), 0 when eager."""
    total = 0.0
    for model in models:
        total += getattr(model, "compile_s", 0.0) + getattr(getattr(model, "model", None),
                                                             "compile_s", 0.0)
    return total


def drafter_name(decoder: SpeculativeDecoder) -> str:
    """The drafter's name as the summary line shows it ("none" without one)."""
    return decoder.drafter.name if decoder.drafter is not None else "none"


def summary(stats: GenerationStats, drafter: str, compile_s: float = 0.0) -> str:
    """One line of the numbers that matter, for stderr."""
    line = (f"[{stats.generated} tokens in {stats.total_s:.2f}s, {stats.tokens_per_s:.1f} tok/s: "
            f"prefill {stats.prefill_s:.2f}s ({stats.prompt_tokens} prompt tokens), "
            f"first token {stats.first_token_s:.2f}s, decode {stats.decode_tokens_per_s:.1f} "
            f"tok/s; {stats.target_calls} target calls, {stats.tokens_per_call:.2f} tokens/call")
    if stats.drafted:
        line += (f"; drafter {drafter}: {stats.accepted}/{stats.drafted} drafts accepted "
                 f"({stats.acceptance_rate:.0%}), alpha {stats.alpha:.2f}")
    if compile_s:
        line += f"; compiling took {compile_s:.1f}s of that"
    return line + "]"
