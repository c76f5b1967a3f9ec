"""OpenAI response and stream-chunk bodies for completions and chat completions."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from specdec.server.jobs import Finished, TokenInfo
from specdec.server.tools import ToolPlan


@dataclass
class Shape:
    """Builds the bodies of one request; chat=False is /v1/completions."""

    model: str
    chat: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    echo: str = ""  # completions with echo: the prompt's text, sent before the completion
    tools: ToolPlan | None = None  # chat with tools: calls in the reply become tool_calls

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def full(self, text: str, done: Finished, logprobs: list[TokenInfo] | None = None) -> dict:
        """The whole non-streamed response."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": self.logprobs(logprobs), "finish_reason": done.finish_reason}
            calls = None if self.tools is None else self.tools.calls(text)
            if calls is not None:
                choice["message"] = {"role": "assistant", "content": calls[1],
                                     "tool_calls": calls[0]}
                if done.finish_reason == "stop":
                    choice["finish_reason"] = "tool_calls"
        else:
            choice = {"index": 0, "text": self.echo + text, "logprobs": self.logprobs(logprobs),
                      "finish_reason": done.finish_reason}
        body = self._head("chat.completion" if self.chat else "text_completion")
        return {**body, "choices": [choice], "usage": usage(done),
                "speculative": done.stats}

    def opening(self) -> list[dict]:
        """Chunks sent before any text: chat announces the assistant role, completions
        with echo send the prompt."""
        if self.chat:
            return [self.chunk("", role=True)]
        return [self.chunk(self.echo)] if self.echo else []

    def chunk(self, text: str, role: bool = False,
              logprobs: list[TokenInfo] | None = None) -> dict:
        lp = self.logprobs(logprobs)
        if self.chat:
            delta = {"role": "assistant", "content": text} if role else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": None}
        return {**self._head(self._chunk_object), "choices": [choice]}

    def logprobs(self, tokens: list[TokenInfo] | None) -> dict | None:
        """OpenAI's logprobs object: chat's `content` list, or the completions' columns."""
        if tokens is None:
            return None
        if self.chat:
            return {"content": [
                {**_entry(t.text, t.logprob),
                 "top_logprobs": [_entry(text, lp) for text, lp in t.top]} for t in tokens]}
        return {"tokens": [t.text for t in tokens],
                "token_logprobs": [t.logprob for t in tokens],
                # the alternatives and the chosen token, as OpenAI's and vLLM's legacy format
                "top_logprobs": [{**dict(t.top), t.text: t.logprob} for t in tokens],
                "text_offset": [len(self.echo) + t.offset for t in tokens]}

    def closing(self, done: Finished, include_usage: bool) -> list[dict]:
        """The chunk with finish_reason (carrying usage and the speculative stats), and
        OpenAI's separate usage chunk when the client asked for it."""
        last = self.chunk("")
        choice = last["choices"][0]
        choice["finish_reason"] = done.finish_reason
        if self.chat:
            choice["delta"] = {}
        last["usage"] = usage(done)
        last["speculative"] = done.stats
        if not include_usage:
            return [last]
        return [last, {**self._head(self._chunk_object), "choices": [], "usage": usage(done)}]

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def usage(done: Finished) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
