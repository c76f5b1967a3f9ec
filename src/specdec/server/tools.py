"""OpenAI's `tools` and `tool_choice` on /v1/chat/completions.

The model's chat template renders the tools (transformers' `tools=` argument). A call is
written as the JSON object {"name": ..., "arguments": {...}}, as Hermes-style templates (Qwen
2.5 and others) ask, inside <tool_call>...</tool_call> when the model chooses itself:
- "none": the tools are shown, the reply is text;
- "auto" (the default with tools): the reply is free; <tool_call> blocks in it whose JSON
  names a given function become `tool_calls`, the rest stays `content`;
- "required" or {"type": "function", "function": {"name": ...}}: the reply is constrained
  (specdec.constraint, exact under speculation) to one such object, its "name" one of the
  functions (or the named one) and its "arguments" valid under that function's
  `parameters` schema; it becomes `tool_calls` (finish_reason "tool_calls").
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from specdec.constraint import Constraint
from specdec.errors import InvalidParameter

CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
MAX_TOOLS = 128


@dataclass(frozen=True)
class ToolPlan:
    """A request's tools (as the template takes them), how it may call them, and the
    function schemas by name."""

    tools: list[dict]
    choice: str  # "none", "auto", "required" or "named"
    functions: dict[str, dict]  # name -> parameters schema
    named: str | None = None
    strict: bool = False

    def constraint(self) -> Constraint | None:
        """The reply's constraint: a call of one function (required) or of the named one."""
        if self.choice not in ("required", "named"):
            return None
        names = [self.named] if self.named is not None else list(self.functions)
        options = [{"type": "object", "additionalProperties": False,
                    "required": ["name", "arguments"],
                    "properties": {"name": {"const": name},
                                   "arguments": self.functions[name]}} for name in names]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return Constraint.json_schema(schema, strict=self.strict, name="tools")

    def calls(self, text: str) -> tuple[list[dict], str | None] | None:
        """(tool_calls, remaining content or None) read from the reply, or None when it
        calls nothing."""
        if self.choice == "none":
            return None
        if self.choice in ("required", "named"):
            call = _call(text.strip(), self.functions)
            return None if call is None else ([call], None)
        calls = [c for c in (_call(block, self.functions) for block in
                             CALL_BLOCK.findall(text)) if c is not None]
        if not calls:
            return None
        rest = CALL_BLOCK.sub("", text).strip()
        return calls, rest or None


def tool_plan(tools: list[dict] | None, tool_choice: str | dict | None) -> ToolPlan | None:
    """The request's ToolPlan (None without tools); InvalidParameter naming the field."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise InvalidParameter("tool_choice", "tool_choice needs tools")
        return None
    if len(tools) > MAX_TOOLS:
        raise InvalidParameter("tools", f"at most {MAX_TOOLS} tools")
    functions: dict[str, dict] = {}
    strict = True
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict) or \
                not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidParameter("tools", 'each tool must be {"type": "function", '
                                   '"function": {"name": ..., "parameters": {...}}}')
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise InvalidParameter("tools", f"tool {function['name']!r}: parameters must be a "
                                   "JSON schema object")
        functions[function["name"]] = parameters
        strict = strict and function.get("strict") is True
    choice, named = _choice(tool_choice, functions)
    return ToolPlan(list(tools), choice, functions, named, strict)


def _choice(tool_choice: str | dict | None, functions: dict[str, dict]) -> tuple[str, str | None]:
    if tool_choice is None:
        return "auto", None
    if tool_choice in ("none", "auto", "required"):
        return str(tool_choice), None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function" and \
            isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        if name not in functions:
            raise InvalidParameter("tool_choice", f"tool_choice names {name!r}, which is not "
                                   "one of the tools")
        return "named", name
    raise InvalidParameter("tool_choice", 'tool_choice must be "none", "auto", "required" or '
                           '{"type": "function", "function": {"name": ...}}')


def _call(text: str, functions: dict[str, dict]) -> dict | None:
    """OpenAI's tool call for a {"name", "arguments"} JSON text, or None."""
    try:
        value: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in functions:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(arguments)}}
