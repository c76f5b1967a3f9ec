"""Stop strings matched on streamed text, across token and block boundaries.

Text arrives in pieces (one per token). A piece may end with the start of a stop string
whose rest comes later, so the matcher holds back the longest tail that is a prefix of some
stop string, and releases it once it can no longer become one.
"""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces; get the text safe to send, and whether a stop string was hit."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()):
        self.stops = [s for s in stops if s]
        self.pending = ""  # text held back: it may be the start of a stop string
        self.stopped = False

    def push(self, piece: str) -> str:
        """Append piece; return the text that can be released now.

        Once a stop string appears, the text before it is released, the rest is dropped and
        `stopped` becomes True; later pushes return "".
        """
        if self.stopped:
            return ""
        text = self.pending + piece
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped, self.pending = True, ""
            return text[:cut]
        hold = self._held_tail(text)
        self.pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """End of generation: whatever was held back is plain text after all."""
        text, self.pending = self.pending, ""
        return "" if self.stopped else text

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _held_tail(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
