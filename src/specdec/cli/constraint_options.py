"""The CLI's constraint flags: --json-schema FILE, --json-object, --regex, --grammar FILE."""

from __future__ import annotations

import argparse
from pathlib import Path

from specdec.constraint import MAX_SOURCE_CHARS, Constraint
from specdec.errors import UsageError


def add_constraint_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json-schema", default=None, metavar="FILE",
                       help="the output is JSON valid under the JSON schema in FILE")
    group.add_argument("--json-object", action="store_true",
                       help="the output is a JSON object (any)")
    group.add_argument("--regex", default=None, metavar="PATTERN",
                       help="the output matches PATTERN in full")
    group.add_argument("--grammar", default=None, metavar="FILE",
                       help="the output is a sentence of the Lark (start rule `start`) or GBNF "
                            "(`root`) grammar in FILE")
    p.add_argument("--lenient-schema", action="store_true",
                   help="with --json-schema: ignore keywords the compiler does not implement "
                        "(default: refuse the schema)")


def constraint_from_args(args: argparse.Namespace) -> Constraint | None:
    """The flags' Constraint (files read and JSON parsed now, before any model loads)."""
    if args.json_schema is not None:
        return Constraint.json_schema(_read(args.json_schema, "--json-schema"),
                                      strict=not args.lenient_schema, name="--json-schema")
    if args.json_object:
        return Constraint.json_object(name="--json-object")
    if args.regex is not None:
        return Constraint.regex(args.regex, name="--regex")
    if args.grammar is not None:
        return Constraint.grammar(_read(args.grammar, "--grammar"), name="--grammar")
    return None


def _read(path: str, flag: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{flag}: file not found: {path}")
    text = file.read_text(encoding="utf-8", errors="replace")
    if len(text) > MAX_SOURCE_CHARS:
        raise UsageError(f"{flag}: {path} is over {MAX_SOURCE_CHARS} characters")
    return text
