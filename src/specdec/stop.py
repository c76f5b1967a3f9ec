"""Stop strings matched on streamed text, across token and block boundaries.

Text arrives in pieces (one per token). A piece may end with the start of a stop string
whose rest comes later, so the matcher holds back the longest tail that is a prefix of some
stop string, and releases it once it can no longer become one.
"""

from __future__ import annotations

from typing import Any

from specdec.detokenize import TextStream


class StopMatcher:
    """Feed text pieces; get the text safe to send, and whether a stop string was hit."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()):
        self.stops = [s for s in stops if s]
        self.pending = ""  # text held back: it may be the start of a stop string
        self.stopped = False
        self.hit: str | None = None  # the stop string found

    def push(self, piece: str) -> str:
        """Append piece; return the text that can be released now.

        Once a stop string appears, the text before it is released, the rest is dropped and
        `stopped` becomes True; later pushes return "".
        """
        if self.stopped:
            return ""
        text = self.pending + piece
        found = self._first_stop(text)
        if found is not None:
            cut, self.hit = found
            self.stopped, self.pending = True, ""
            return text[:cut]
        hold = self._held_tail(text)
        self.pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """End of generation: whatever was held back is plain text after all."""
        text, self.pending = self.pending, ""
        return "" if self.stopped else text

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        """(position, stop string) of the earliest stop string in text."""
        found = [(i, s) for s in self.stops if (i := text.find(s)) >= 0]
        return min(found, key=lambda hit: hit[0]) if found else None

    def _held_tail(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


class StoppingText:
    """Generated token ids in, text safe to show out: incremental detokenization, then stop
    strings. One token per push, so the token that completes a stop string is known; the CLI
    and the server both go through this."""

    def __init__(self, tokenizer: Any, stops: list[str] | tuple[str, ...] = ()):
        self.text = TextStream(tokenizer)
        self.matcher = StopMatcher(stops)
        self.tokens: list[int] = []  # tokens pushed until (and including) a stop string's end
        self.released: list[str] = []

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    @property
    def stop_string(self) -> str | None:
        return self.matcher.hit

    def push(self, token: int) -> str:
        """Append one generated token; return the text it releases ("" after a stop)."""
        if self.stopped:
            return ""
        self.tokens.append(token)
        return self._release(self.matcher.push(self.text.push([token])))

    def flush(self) -> str:
        """End of generation: release what was held back as a possible stop string."""
        return self._release(self.matcher.flush())

    @property
    def output(self) -> str:
        """All text released so far."""
        return "".join(self.released)

    def _release(self, text: str) -> str:
        if text:
            self.released.append(text)
        return text
