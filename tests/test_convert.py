"""Converted copies of GGUF models: written once, verified on every load, rebuilt if tampered."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from specdec.cli import main as cli
from specdec.models import convert, fetch, load_model, loading
from specdec.models.registry import REGISTRY, RegistryEntry
from test_loading import write_tiny_gguf
from tiny import tiny_llama

IDS = torch.tensor([[5, 77, 200, 3, 258, 12]])


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf",
                           tiny_llama(vocab_size=259, layers=2))


@pytest.fixture
def gguf_reads(monkeypatch) -> list[Path]:
    """Every GGUF actually read (dequantized) by load_model."""
    reads: list[Path] = []
    original = loading._read_gguf

    def spy(path, dtype):
        reads.append(path)
        return original(path, dtype)

    monkeypatch.setattr(loading, "_read_gguf", spy)
    return reads


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model.model(input_ids=IDS).logits


def only_copy() -> Path:
    copies = convert.list_copies()
    assert len(copies) == 1, copies
    return copies[0].path


def test_first_load_keeps_a_verified_copy_and_the_next_load_uses_it(gguf, gguf_reads, capsys):
    first = load_model(gguf, dtype="float32")
    assert gguf_reads == [gguf]
    folder = only_copy()
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert folder.name == f"tiny.{sha[:16]}.float32"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sha256"] == sha and manifest["dtype"] == "float32"
    assert manifest["name"] == "tiny.gguf"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    assert not any(p.suffix in loading.PICKLED for p in folder.iterdir())
    assert "kept a converted copy" in capsys.readouterr().err

    second = load_model(gguf, dtype="float32")
    assert gguf_reads == [gguf]  # not read again
    assert second.name == "tiny.gguf" and second.vocab_size == 259
    assert torch.equal(logits(first), logits(second))
    text = "abc xyz"
    assert second.tokenizer(text).input_ids == first.tokenizer(text).input_ids
    assert "loading tiny.gguf from GGUF" not in capsys.readouterr().err


def test_each_dtype_has_its_own_copy(gguf, gguf_reads):
    load_model(gguf, dtype="float32")
    model = load_model(gguf, dtype="bfloat16")
    assert len(gguf_reads) == 2 and model.model.dtype == torch.bfloat16
    assert sorted(c.dtype for c in convert.list_copies()) == ["bfloat16", "float32"]
    load_model(gguf, dtype="bfloat16")
    assert len(gguf_reads) == 2


@pytest.mark.parametrize("damage", ["flip a weight byte", "truncate the weights",
                                    "drop a pickle beside it", "edit the manifest's dtype"])
def test_a_damaged_copy_is_refused_deleted_and_rebuilt(gguf, gguf_reads, capsys, damage):
    reference = logits(load_model(gguf, dtype="float32"))
    folder = only_copy()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip a weight byte":
        data[-5] ^= 0x40  # inside the last tensor: the file still parses
        weights.write_bytes(bytes(data))
    elif damage == "truncate the weights":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "drop a pickle beside it":
        (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    else:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["dtype"] = "bfloat16"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()

    model = load_model(gguf, dtype="float32")
    err = capsys.readouterr().err
    assert "refused" in err and "rebuilding it from the GGUF" in err
    assert len(gguf_reads) == 2  # rebuilt from the GGUF
    assert torch.equal(logits(model), reference)
    assert only_copy() == folder and not (folder / "pytorch_model.bin").exists()
    load_model(gguf, dtype="float32")  # the rebuilt copy is valid
    assert len(gguf_reads) == 2


def test_convert_false_writes_nothing(gguf, gguf_reads):
    load_model(gguf, dtype="float32", convert=False)
    load_model(gguf, dtype="float32", convert=False)
    assert len(gguf_reads) == 2 and convert.list_copies() == []


def test_a_copy_that_differs_from_the_gguf_is_not_kept(gguf, monkeypatch, capsys):
    monkeypatch.setattr(convert, "PROBE_TEXT", "abc")
    original = convert._write

    def write_other_weights(folder, key, hf_model, tokenizer, name):
        clone = tiny_llama(vocab_size=259, layers=2, seed=7)  # same shapes, other weights
        clone.generation_config = hf_model.generation_config
        original(folder, key, clone, tokenizer, name)

    monkeypatch.setattr(convert, "_write", write_other_weights)
    load_model(gguf, dtype="float32")
    assert "differs from the GGUF model (logits)" in capsys.readouterr().err
    assert convert.list_copies() == [] and list(convert.root().iterdir()) == []


def test_a_copy_that_cannot_be_written_or_read_back_never_fails_the_load(gguf, monkeypatch,
                                                                         capsys):
    from specdec.errors import ModelLoadError

    def unreadable(path, dtype):
        raise ModelLoadError(f"cannot load {path}: broken")

    readable = loading._read_directory
    monkeypatch.setattr(loading, "_read_directory", unreadable)
    model = load_model(gguf, dtype="float32")
    assert model.vocab_size == 259
    assert "no converted copy of tiny.gguf: cannot load" in capsys.readouterr().err
    assert list(convert.root().iterdir()) == []  # the temporary folder is gone too
    monkeypatch.setattr(loading, "_read_directory", readable)
    monkeypatch.setattr(convert, "root", lambda: Path("/proc/no-such-dir"))  # not writable
    assert load_model(gguf, dtype="float32").vocab_size == 259
    assert "no converted copy of tiny.gguf" in capsys.readouterr().err


def test_a_registry_model_loads_from_its_copy_without_its_gguf(gguf, gguf_reads, monkeypatch):
    data = gguf.read_bytes()
    entry = RegistryEntry("tiny-registered", "tiny", "tiny-registered.gguf", (), len(data),
                          hashlib.sha256(data).hexdigest(), 1000, "llama", "F32")
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    fetch.cache_dir().mkdir(parents=True, exist_ok=True)
    fetch.cached_path(entry.name).write_bytes(data)

    def no_download(part, dest):
        raise AssertionError("nothing to download")

    first = load_model(entry.name, dtype="float32", downloader=no_download)
    fetch.cached_path(entry.name).unlink()  # the copy alone must do now
    second = load_model(entry.name, dtype="float32", downloader=no_download)
    assert len(gguf_reads) == 1 and second.name == "tiny-registered"
    assert torch.equal(logits(first), logits(second))


def test_models_list_shows_copies_and_clear_frees_them(gguf, capsys):
    load_model(gguf, dtype="float32")
    load_model(gguf, dtype="bfloat16")
    capsys.readouterr()
    assert cli(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "converted copies" in out and "tiny.gguf" in out and "float32" in out
    assert cli(["models", "clear", "someone-else"]) == 0
    assert "no converted copy" in capsys.readouterr().out and len(convert.list_copies()) == 2
    assert cli(["models", "clear", "tiny.gguf"]) == 0
    out = capsys.readouterr().out
    assert out.count("removed") == 2 and "MB" in out
    assert convert.list_copies() == []
