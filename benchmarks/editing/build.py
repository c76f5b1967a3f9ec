"""Build the editing workload (src/specdec/bench/data/editing.jsonl) from CPython's stdlib.

Twenty requests a user recognizes: a function or a document is given in the prompt and asked
to be changed slightly, so most of the answer repeats the prompt. The texts are CPython
3.11.7's own (`Lib/*.py`, PSF License Version 2, shipped as data/LICENSE-PSF-2.0.txt); the
jsonl is committed, so the workload does not depend on the Python that runs the bench.

    python benchmarks/editing/build.py   # rewrites the jsonl from this interpreter's stdlib
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sysconfig
from pathlib import Path

OUT = Path(__file__).parents[2] / "src" / "specdec" / "bench" / "data" / "editing.jsonl"

# (module, function or "__doc__" / a module-level string, request)
CODE = [
    ("textwrap", "dedent", "Rename the local variable `margin` to `common_prefix` everywhere."),
    ("textwrap", "indent", "Add type hints to the function signature (text: str, prefix: str, "
                           "predicate optional callable) and its return value."),
    ("colorsys", "rgb_to_hls", "Rename the variables `maxc` and `minc` to `max_component` "
                               "and `min_component`."),
    ("bisect", "bisect_right", "Rename the parameters `lo` and `hi` to `low` and `high`, "
                               "and update the docstring to match."),
    ("shlex", "split", "Raise a TypeError with a clear message when `s` is None, instead of "
                       "the current behaviour."),
    ("fnmatch", "filter", "Rename the parameter `pat` to `pattern`."),
    ("string", "capwords", "Add type hints and a one-line example to the docstring."),
    ("heapq", "nsmallest", "Rename the parameter `iterable` to `items` everywhere in the "
                           "function."),
    ("difflib", "get_close_matches", "Change the default `cutoff` from 0.6 to 0.7 and update "
                                     "the docstring accordingly."),
    ("posixpath", "relpath", "Rename the local variable `start_list` to `start_parts` and "
                             "`path_list` to `path_parts`."),
    ("statistics", "median", "Replace the `if n % 2 == 1` test with a check on `n & 1`, "
                             "keeping everything else identical."),
    ("statistics", "mode", "Rename the function to `most_common_value`, updating the "
                           "docstring examples."),
    ("base64", "b64decode", "Rename the parameter `validate` to `strict`."),
    ("functools", "_make_key", "Rename the parameter `kwd_mark` to `keyword_marker`."),
]
DOCS = [
    ("heapq", "__doc__", "Revise this text to use American spelling and replace every "
                         "'we' with 'you'."),
    ("doctest", "__doc__", "Fix the capitalization so that every sentence starts with a "
                           "capital letter; change nothing else."),
    ("copy", "__doc__", "Replace 'shallow' with 'one-level' everywhere and change nothing "
                        "else."),
    ("tempfile", "__doc__", "Put every function name in backticks and change nothing else."),
    ("sched", "__doc__", "Replace 'Unix' with 'POSIX' wherever it appears, and otherwise "
                         "correct only spelling mistakes."),
    ("codeop", "__doc__", "Make every sentence end with a period and change nothing else."),
]


def source_of(module: str, name: str) -> str:
    path = Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py"
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    if name == "__doc__":
        return ast.get_docstring(tree, clean=False).strip("\n")
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return ast.get_source_segment(text, node)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                 for t in node.targets):
            return ast.literal_eval(node.value).strip("\n")
    raise LookupError(f"{module}.{name} not found")


def prompt(kind: str, request: str, text: str) -> str:
    fence = "```python" if kind == "code" else "```text"
    return (f"{request}\nReturn the complete updated {'code' if kind == 'code' else 'text'} "
            f"and nothing else.\n\n{fence}\n{text}\n```")


def main() -> None:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    version = platform.python_version()
    rows = []
    for kind, items in (("code_edit", CODE), ("doc_edit", DOCS)):
        for module, name, request in items:
            text = source_of(module, name)
            rows.append({"question_id": f"{module}.{name}", "category": kind,
                         "turns": [prompt("code" if kind == "code_edit" else "doc", request,
                                          text)],
                         "source": f"CPython {version} Lib/{module}.py ({name})",
                         "license": "PSF-2.0"})
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} requests -> {OUT}")


if __name__ == "__main__":
    main()
