"""`specdec generate --json-schema / --json-object / --regex / --grammar` end to end."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from server_support import save_tiny_model
from specdec.cli import main as cli

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "ok"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                         "ok": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("cli_constraints") / "target", layers=1)


def _generate(capsys, target, *flags: str) -> tuple[int, dict | None, str]:
    code = cli(["generate", "x:", "--target", str(target), "--dtype", "float32",
                "--max-new-tokens", "60", "--json", *flags])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


@pytest.mark.parametrize("draft", ["none", "ngram"])
def test_json_schema_file(capsys, target, tmp_path, draft):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    code, result, err = _generate(capsys, target, "--json-schema", str(path), "--draft", draft,
                                  "--temperature", "1", "--seed", "3")
    assert code == 0, err
    assert result["finish_reason"] == "stop"
    jsonschema.validate(json.loads(result["text"]), SCHEMA)
    assert result["stats"]["forced_tokens"] >= len('{"id": ') + len(', "ok": ')


def test_regex_grammar_and_json_object(capsys, target, tmp_path):
    code, result, err = _generate(capsys, target, "--regex", "(yes|no)!")
    assert code == 0 and re.fullmatch("(yes|no)!", result["text"]), err
    grammar = tmp_path / "g.lark"
    grammar.write_text('start: "id=" /[0-9]{3}/ ";"\n')
    code, result, err = _generate(capsys, target, "--grammar", str(grammar))
    assert code == 0 and re.fullmatch("id=[0-9]{3};", result["text"]), err
    code, result, err = _generate(capsys, target, "--json-object", "--max-new-tokens", "8")
    assert code == 0 and result["text"].startswith("{"), err


def test_bad_constraints_are_one_line_errors(capsys, target, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "strin"}')
    for flags, words in ((["--json-schema", str(bad)], "--json-schema does not compile"),
                         (["--json-schema", str(tmp_path / "missing.json")], "not found"),
                         (["--regex", "[0-9"], "--regex does not compile")):
        code, _, err = _generate(capsys, target, *flags)
        assert code != 0 and words in err and "Traceback" not in err, err
