"""sha256 remembered by file identity, and the registry's cached-file check that uses it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from specdec.errors import ModelLoadError
from specdec.models import fetch, file_digest
from specdec.models.file_digest import cached_sha256, marker_path, sha256_file
from specdec.models.registry import REGISTRY, RegistryEntry, WheelPart


def test_sha256_marker_is_reused_until_the_file_changes(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data, markers = tmp_path / "model.gguf", tmp_path / "markers"
    data.write_bytes(b"abc" * 1000)
    digest = cached_sha256(data, markers)  # just written: hashed, not remembered yet
    assert digest == sha256_file(data) and not marker_path(data, markers).exists()
    assert cached_sha256(data, markers, settle_s=0) == digest
    assert marker_path(data, markers).is_file()
    calls = []
    real = file_digest.sha256_file
    monkeypatch.setattr(file_digest, "sha256_file", lambda p: calls.append(p) or real(p))
    assert cached_sha256(data, markers, settle_s=0) == digest and calls == []
    data.write_bytes(b"abd" * 1000)  # same size; its times move (forced: they tick coarsely)
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cached_sha256(data, markers, settle_s=0) == real(data) != digest
    assert len(calls) == 1
    marker_path(data, markers).write_text("{broken")
    assert cached_sha256(data, markers, settle_s=0) == real(data)
    assert len(calls) == 2


def test_ensure_model_hashes_a_settled_file_once_and_catches_tampering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"GGUF" + bytes(range(256)) * 64
    entry = RegistryEntry("local-model", "local", "local.gguf",
                          (WheelPart("local-part", "1.0", "local/data.bin"),), len(data),
                          hashlib.sha256(data).hexdigest(), 1000, "llama", "F32")
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(file_digest, "SETTLE_S", 0.0)
    path = tmp_path / entry.filename
    path.write_bytes(data)
    calls = []
    real = file_digest.sha256_file
    monkeypatch.setattr(file_digest, "sha256_file", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        assert fetch.ensure_model(entry.name) == path
    assert len(calls) == 1  # hashed once, then remembered
    path.write_bytes(data[:-1] + b"X")  # same size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ModelLoadError, match="corrupted or tampered"):
        fetch.ensure_model(entry.name)
    assert not path.exists() and len(calls) == 2
