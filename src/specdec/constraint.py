"""What a request's output must match: a JSON schema, any JSON object, a regex or a grammar.

A Constraint is the request's spec only (plain data, hashable, no library objects): it is
compiled against the target's tokenizer by specdec.grammar, which refuses what it cannot
compile. Build one with the constructors (`Constraint.json_schema(...)` etc.).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from specdec.errors import InvalidParameter

KINDS = ("json_schema", "json_object", "regex", "grammar")
MAX_SOURCE_CHARS = 100_000  # a schema, regex or grammar past this is refused, not compiled


@dataclass(frozen=True)
class Constraint:
    """kind: one of KINDS. source: the JSON schema as JSON text, the regex, or the grammar
    (Lark syntax, llguidance's dialect; a GBNF grammar is translated). strict (JSON schema):
    True = every keyword must be enforced, a schema with one the compiler does not implement
    is refused; False = such keywords are ignored and the rest is enforced."""

    kind: str
    source: str = ""
    strict: bool = True
    name: str = "constraint"  # the request field it came from, for error messages

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidParameter(self.name, f"{self.name} kind must be one of "
                                   f"{', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.source, str):
            raise InvalidParameter(self.name, f"{self.name} source must be text")
        if len(self.source) > MAX_SOURCE_CHARS:
            raise InvalidParameter(self.name, f"{self.name} is too large: {len(self.source)} "
                                   f"characters, at most {MAX_SOURCE_CHARS}")
        if self.kind != "json_object" and not self.source:
            raise InvalidParameter(self.name, f"{self.name} of kind {self.kind} is empty")
        if not isinstance(self.strict, bool):
            raise InvalidParameter(self.name, f"{self.name} strict must be true or false")

    @staticmethod
    def json_schema(schema: dict[str, Any] | str, strict: bool = True,
                    name: str = "constraint") -> Constraint:
        """Output is JSON valid under `schema` (a dict, or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as error:
                raise InvalidParameter(name, f"{name}: the schema is not JSON ({error})") \
                    from None
        if not isinstance(schema, dict):
            raise InvalidParameter(name, f"{name}: a JSON schema must be an object, got "
                                   f"{type(schema).__name__}")
        # key order kept: properties are written in the schema's order
        return Constraint("json_schema", json.dumps(schema), strict, name)

    @staticmethod
    def json_object(name: str = "constraint") -> Constraint:
        """Output is a JSON object, any (OpenAI's `json_object` mode)."""
        return Constraint("json_object", "", True, name)

    @staticmethod
    def regex(pattern: str, name: str = "constraint") -> Constraint:
        """Output matches `pattern` in full."""
        return Constraint("regex", pattern, True, name)

    @staticmethod
    def grammar(text: str, name: str = "constraint") -> Constraint:
        """Output is a sentence of the Lark (or GBNF) grammar `text`, from its `start` rule
        (GBNF: `root`)."""
        return Constraint("grammar", text, True, name)
