"""The GGUF tokenizer cache: converted once, verified, reused; tampered copies rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gguf_fixtures import CHAT_TEMPLATE, write_decoder
from specdec.models import gguf_tokenizer
from specdec.models.file_digest import sha256_file
from specdec.models.gguf_tokenizer import (
    MANIFEST,
    TOKENIZERS,
    differences,
    load_gguf_tokenizer,
    manifest_problem,
)

TEXT = "the cat sat in a hat <|im_end|>"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_decoder(path, "qwen2", {}, layers=1)
    return path


@pytest.fixture(scope="module")
def converted(gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("converted again although a verified copy was cached")
    monkeypatch.setattr(gguf_tokenizer, "convert_and_cache", fail)


def test_cached_tokenizer_round_trips(gguf: Path, converted, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_gguf_tokenizer(gguf, root=tmp_path)
    folder = tmp_path / TOKENIZERS / sha256_file(gguf)
    assert manifest_problem(folder) is None
    manifest = json.loads((folder / MANIFEST).read_text())
    assert "tokenizer.json" in manifest
    _no_conversion(monkeypatch)
    again = load_gguf_tokenizer(gguf, root=tmp_path)
    for tokenizer in (first, again):
        assert differences(converted, tokenizer) is None
        assert tokenizer.encode(TEXT) == converted.encode(TEXT)
        assert tokenizer.eos_token == "<|im_end|>"
        assert tokenizer.chat_template == CHAT_TEMPLATE
    ids = again.encode(TEXT)
    assert ids[-1] == again.convert_tokens_to_ids("<|im_end|>")
    assert again.decode(ids) == TEXT


def test_a_tampered_copy_is_refused_and_rebuilt(gguf: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    load_gguf_tokenizer(gguf, root=tmp_path)
    folder = tmp_path / TOKENIZERS / sha256_file(gguf)
    config = folder / "tokenizer.json"
    good = config.read_text()
    config.write_text(good.replace('"<|im_end|>"', '"<|im_stop|>"'))
    assert "tokenizer.json does not match" in manifest_problem(folder)
    tokenizer = load_gguf_tokenizer(gguf, root=tmp_path)
    assert "refusing the cached tokenizer" in capsys.readouterr().err
    assert tokenizer.eos_token == "<|im_end|>"
    assert config.read_text() == good and manifest_problem(folder) is None


def test_extra_or_missing_files_and_manifest_are_problems(gguf: Path, tmp_path: Path) -> None:
    load_gguf_tokenizer(gguf, root=tmp_path)
    folder = tmp_path / TOKENIZERS / sha256_file(gguf)
    (folder / "added_tokens.json").write_text("{}")
    assert "differ from the manifest" in manifest_problem(folder)
    (folder / "added_tokens.json").unlink()
    (folder / MANIFEST).write_text("not json")
    assert manifest_problem(folder) == "no readable manifest"


def test_differences_names_what_differs(converted) -> None:
    from copy import deepcopy

    other = deepcopy(converted)
    other.chat_template = "{{ messages }}"
    assert "chat template" in differences(converted, other)
