"""Prompts through a tokenizer's chat template: the one encoding of chat messages, used by
`generate --chat`, `chat`, the server's /v1/chat/completions and the benchmark."""

from __future__ import annotations

from typing import Any

from specdec.errors import UsageError


def chat_text(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> str:
    """messages rendered with the tokenizer's chat template, ready for the assistant's reply
    (tools: OpenAI-style function specs the template shows the model).

    LookupError when there is no template; ValueError when the template refuses the messages
    (some templates accept no system message, or require alternating roles).
    """
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise LookupError("this model has no chat template")
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=True)
    except TemplateError as error:  # also what a template's raise_exception() raises
        raise UsageError(f"the chat template refused the messages: {error}") from None


def chat_ids(tokenizer: Any, messages: list[dict],
             tools: list[dict] | None = None) -> list[int]:
    """Token ids of the messages, ready for the assistant's reply (see chat_prompt)."""
    return chat_prompt(tokenizer, messages, tools)[1]


def chat_prompt(tokenizer: Any, messages: list[dict],
                tools: list[dict] | None = None) -> tuple[str, list[int]]:
    """(chat_text, its token ids): the template writes the special tokens (BOS) itself, so
    the tokenizer adds none."""
    text = chat_text(tokenizer, messages, tools)
    return text, text_ids(tokenizer, text, add_special_tokens=False)


def user_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """One user message through the chat template when the tokenizer has one, else the
    text as is (with the tokenizer's own special tokens): how the benchmark asks."""
    if getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, [{"role": "user", "content": text}])
    return text_ids(tokenizer, text)


def text_ids(tokenizer: Any, text: str, add_special_tokens: bool = True) -> list[int]:
    return [int(t) for t in tokenizer(text, add_special_tokens=add_special_tokens).input_ids]
