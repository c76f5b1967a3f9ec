"""Incremental detokenization: text grows token by token without broken characters."""

from __future__ import annotations

import os
from typing import Any

# tokens decoded before the new ones: context for merges (SentencePiece drops the space of a
# sequence's first word, so a token decoded alone can differ from the same token in context)
CONTEXT_TOKENS = 4
# tokens held back while their text ends in an incomplete character; a UTF-8 character has at
# most 4 bytes and a token at least one, so past this the bytes are invalid, not incomplete
MAX_PENDING = 8


class TextStream:
    """Feed token ids, get the new text they complete.

    Each push decodes a bounded window, never the whole output: up to `context` tokens whose
    text was already emitted, then the tokens not yet emitted. The new text is the window's
    decoding past the decoding of its context. Text ending in a replacement character (an
    incomplete multi-byte UTF-8 sequence) is held back until the character completes, or
    until `max_pending` tokens wait (then the bytes are invalid and emitted as decoded).
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True,
                 context: int = CONTEXT_TOKENS, max_pending: int = MAX_PENDING):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.context = context
        self.max_pending = max_pending
        self.tokens: list[int] = []
        self.text = ""  # all text emitted so far (appending copies it: memcpy, not decoding)
        self._start = 0  # first token of the context window
        self._read = 0  # tokens before this have had their text emitted
        self._context_text = ""  # decoding of tokens[_start:_read]

    def push(self, tokens: list[int]) -> str:
        self.tokens.extend(tokens)
        end, text = self._complete()
        if end == self._read:
            return ""
        # a tokenizer may re-read the context once more tokens arrive; what was emitted
        # cannot be taken back, so emit only past the part both decodings share
        new = text[len(os.path.commonprefix([self._context_text, text])):]
        self.text += new
        self._read = end
        self._start = max(end - self.context, 0)
        self._context_text = self._decode(self.tokens[self._start:end])
        return new

    def _complete(self) -> tuple[int, str]:
        """(end, text): the most new tokens whose text ends in a whole character, and the
        window's decoding up to there; end is `_read` when there are none yet."""
        end = len(self.tokens)
        # an incomplete character's bytes span at most 3 tokens (each holds >= 1 byte)
        for cut in range(end, max(self._read + 1, end - 3) - 1, -1):
            text = self._decode(self.tokens[self._start:cut])
            if not text.endswith("\ufffd"):
                return cut, text
        if end - self._read >= self.max_pending:  # invalid bytes: they never complete
            # ...except the last 3 tokens, which may still hold a character's beginning
            return end - 3, self._decode(self.tokens[self._start:end - 3])
        return self._read, ""

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens)
