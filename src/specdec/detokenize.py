"""Incremental detokenization: text grows token by token without broken characters."""

from __future__ import annotations

import os
from typing import Any


class TextStream:
    """Feed token ids, get the new text they complete.

    Decodes the whole sequence and emits the difference, holding back a trailing
    replacement character (an incomplete multi-byte UTF-8 sequence).
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = []
        self.text = ""

    def push(self, tokens: list[int]) -> str:
        self.tokens.extend(tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=self.skip_special_tokens)
        if text.endswith("\ufffd"):
            return ""
        # a tokenizer may re-read earlier text once more tokens arrive; what was emitted
        # cannot be taken back, so emit only past the part both decodings share
        new = text[len(os.path.commonprefix([self.text, text])):]
        self.text = text
        return new
