"""Request bodies of the OpenAI-compatible endpoints (pydantic, strict types).

Only what the engine can honour is accepted: n = 1 (several choices need batching, not built
yet). Fields the OpenAI API has but we cannot serve are refused by name instead of silently
ignored. Penalties and logit_bias apply to the target and the drafter alike (exact);
logprobs are the target's, from the verification forward.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from specdec.constraint import Constraint
from specdec.errors import InvalidParameter
from specdec.sampling import BOUNDS, MAX_LOGIT_BIAS, SamplingParams
from specdec.server.tools import ToolPlan, tool_plan

MAX_STOP_STRINGS = 4  # as the OpenAI API
MAX_STOP_LENGTH = 256

TokenIds = list[Annotated[int, Field(ge=0)]]


class APIError(Exception):
    """An error returned as OpenAI's {"error": {message, type, param, code}} object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class Speculative(BaseModel):
    """Per-request control of speculation (extension, after llama.cpp's `speculative.n_max`).

    Speed only: the text's distribution is the same whatever is drafted. Unknown keys are
    refused (a misspelt cap must not be silently ignored).
    """

    model_config = ConfigDict(strict=True, extra="forbid")
    enabled: bool = True  # false: plain decoding for this request (as max_draft_tokens 0)
    # at most this many tokens (tree nodes) drafted per step; null: the server's own gamma
    max_draft_tokens: int | None = Field(default=None, **BOUNDS["max_draft_tokens"].pydantic())

    def cap(self) -> int | None:
        """SamplingParams.max_draft_tokens: 0 when disabled."""
        return 0 if not self.enabled else self.max_draft_tokens


class _Sampling(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    # bounds: sampling.bounds.BOUNDS, the table SamplingParams checks against
    max_tokens: int | None = Field(default=None, **BOUNDS["max_new_tokens"].pydantic())
    temperature: float = Field(default=1.0, **BOUNDS["temperature"].pydantic())
    top_p: float = Field(default=1.0, **BOUNDS["top_p"].pydantic())
    top_k: int = Field(default=0, **BOUNDS["top_k"].pydantic())  # extension (vLLM, llama.cpp)
    min_p: float = Field(default=0.0, **BOUNDS["min_p"].pydantic())  # extension
    seed: int | None = Field(default=None, **BOUNDS["seed"].pydantic())
    ignore_eos: bool = False  # extension (vLLM): generate max_tokens whatever the model says
    # extension: seed-keyed noise, the same text for a seed whatever the drafter and gamma
    # (None: on exactly when seed is given); false: the rejection rule
    coupled: bool | None = None
    # extension: block verification (Sun et al. 2025) for uncoupled sampling
    block_verification: bool = False
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]] | None = None
    presence_penalty: float = Field(default=0.0, **BOUNDS["presence_penalty"].pydantic())
    frequency_penalty: float = Field(default=0.0, **BOUNDS["frequency_penalty"].pydantic())
    # extension (vLLM, transformers)
    repetition_penalty: float = Field(default=1.0, **BOUNDS["repetition_penalty"].pydantic())
    logit_bias: dict[str, Annotated[float, Field(**BOUNDS["logit_bias"].pydantic())]] | None = \
        Field(default=None, max_length=MAX_LOGIT_BIAS)
    speculative: Speculative | None = None  # extension: per-request speculation control
    # {"type": "text" | "json_object" | "json_schema", ...} as OpenAI's; extensions:
    # {"type": "regex", "regex": ...} and {"type": "grammar", "grammar": ...} (Lark or GBNF)
    response_format: dict | None = None

    @field_validator("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_size(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str) and len(value) > MAX_STOP_LENGTH:
            raise ValueError(f"stop strings are at most {MAX_STOP_LENGTH} characters")
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def check_supported(self) -> None:
        """Refuse what the engine would otherwise silently ignore."""
        if self.n != 1:
            raise APIError(400, f"only n=1 is supported (several choices need batching, "
                           f"not built yet), got n={self.n}", "n")

    def top_logprobs_wanted(self) -> int | None:
        """Alternatives per token for SamplingParams.logprobs; None = no logprobs."""
        return None

    def sampling_params(self, max_new_tokens: int) -> SamplingParams:
        """ValueError on a bad combination (the route answers 400)."""
        return SamplingParams(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            min_p=self.min_p, seed=self.seed, max_new_tokens=max_new_tokens,
            ignore_eos=self.ignore_eos, repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            logit_bias=_logit_bias(self.logit_bias), logprobs=self.top_logprobs_wanted(),
            coupled=self.coupled, block_verification=self.block_verification,
            max_draft_tokens=None if self.speculative is None else self.speculative.cap(),
            constraint=self.constraint())

    def constraint(self) -> Constraint | None:
        """What the reply must match (response_format)."""
        return response_constraint(self.response_format)


class CompletionRequest(_Sampling):
    prompt: str | TokenIds | list[str] | list[TokenIds]
    echo: bool = False
    logprobs: int | None = Field(default=None, **BOUNDS["logprobs"].pydantic())
    best_of: int | None = None
    suffix: str | None = None

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (a batch of one is unwrapped)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise APIError(400, f"only one prompt per request is supported, got "
                               f"{len(prompt)}", "prompt")
            prompt = prompt[0]
        if len(prompt) == 0:
            raise APIError(400, "prompt is empty", "prompt")
        return prompt

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo and self.logprobs is not None:
            raise APIError(400, "logprobs with echo is not supported (prompt logprobs)",
                           "logprobs")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported", "best_of")
        if self.suffix:
            raise APIError(400, "suffix is not supported", "suffix")

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None: an assistant turn of tool calls
    name: str | None = None
    tool_calls: list[dict] | None = None  # an assistant turn's calls, as we return them
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict:
        """The message as chat templates take it (a call's arguments as an object)."""
        out: dict = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [_template_call(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            out["name"] = self.name
        return out


def _template_call(call: dict) -> dict:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # a template writes a malformed one as text
            function["arguments"] = json.loads(arguments)
    return {**call, "function": function}


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    # newer name of max_tokens
    max_completion_tokens: int | None = Field(default=None, **BOUNDS["max_new_tokens"].pydantic())
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, **BOUNDS["logprobs"].pydantic())
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        try:
            plan = self.tool_plan()
        except InvalidParameter as error:
            raise APIError(400, str(error), error.param) from None
        if plan is not None and plan.choice != "none":
            if self.stream:
                raise APIError(400, "tool calls are not streamed yet: use stream: false",
                               "stream")
            if self.response_format is not None and plan.constraint() is not None:
                raise APIError(400, "a required or named tool call and response_format "
                               "do not go together", "response_format")
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise APIError(400, "max_tokens and max_completion_tokens disagree",
                               "max_completion_tokens")
            self.max_tokens = self.max_completion_tokens

    def chat(self) -> list[dict]:
        return [m.for_template() for m in self.messages]

    def tool_plan(self) -> ToolPlan | None:
        """The tools and how the reply may call them (server/tools.py)."""
        return tool_plan(self.tools, self.tool_choice)

    def constraint(self) -> Constraint | None:
        """A required or named tool call, else response_format."""
        plan = self.tool_plan()
        called = None if plan is None else plan.constraint()
        return called or super().constraint()

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def response_constraint(response_format: dict | None) -> Constraint | None:
    """OpenAI's response_format as a Constraint (None: free text); InvalidParameter naming
    response_format when it is malformed."""
    name = "response_format"
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint.json_object(name=name)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidParameter(name, "response_format json_schema needs "
                                   "{\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidParameter(name, "response_format json_schema.strict must be a boolean")
        return Constraint.json_schema(spec["schema"], strict=bool(strict), name=name)
    if kind in ("regex", "grammar") and isinstance(response_format.get(kind), str):
        source = response_format[kind]
        return Constraint.regex(source, name=name) if kind == "regex" else \
            Constraint.grammar(source, name=name)
    raise InvalidParameter(name, "response_format type must be text, json_object or "
                           "json_schema (extensions: regex, grammar, with their text), got "
                           f"{response_format!r:.200}")


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's {"token id": bias} with the ids as strings -> {id: bias}."""
    out = {}
    for key, value in (bias or {}).items():
        if not key.isdigit():
            raise InvalidParameter("logit_bias", f"logit_bias keys must be token ids, got "
                                   f"{key!r}")
        out[int(key)] = value
    return out


def parse(model: type[_Sampling], body: bytes) -> _Sampling:
    """Validate a JSON body; malformed JSON and bad fields become a 400 APIError."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise APIError(400, f"malformed JSON body: {first['msg']}") from None
        where = ".".join(str(part) for part in first["loc"])
        param = str(first["loc"][0]) if first["loc"] else None
        raise APIError(400, f"{where}: {first['msg']}" if where else first["msg"],
                       param) from None
    request.check_supported()
    return request


def openapi_body(model: type[BaseModel]) -> dict:
    """The OpenAPI requestBody of a route that reads `model` from the raw body itself, so the
    published schema says what the route accepts (clients and schema fuzzers read it)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": inline(schema)}}}}
