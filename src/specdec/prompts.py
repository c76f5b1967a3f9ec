"""Prompts through a tokenizer's chat template, shared by the CLI and the server."""

from __future__ import annotations

from typing import Any

from specdec.errors import UsageError


def chat_text(tokenizer: Any, messages: list[dict]) -> str:
    """messages rendered with the tokenizer's chat template, ready for the assistant's reply.

    LookupError when there is no template; ValueError when the template refuses the messages
    (some templates accept no system message, or require alternating roles).
    """
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise LookupError("this model has no chat template")
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    except TemplateError as error:  # also what a template's raise_exception() raises
        raise UsageError(f"the chat template refused the messages: {error}") from None


def chat_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of chat_text: the template writes the special tokens (BOS) itself."""
    return list(tokenizer(chat_text(tokenizer, messages), add_special_tokens=False).input_ids)
