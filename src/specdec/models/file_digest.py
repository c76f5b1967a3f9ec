"""sha256 of big files, hashed once: a marker records it with the file's identity.

Hashing a 491 MB GGUF costs about a second; a file whose device, inode, size and
modification time are unchanged since it was hashed has not been rewritten through the
filesystem, so the recorded digest is reused. Any change to those re-hashes. (A marker is
not a defence against someone who edits a file and restores its mtime on purpose: that
person can edit the marker as well.)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CHUNK = 8 << 20


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file is rewritten or replaced."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @staticmethod
    def of(path: Path) -> FileIdentity:
        stat = path.stat()
        return FileIdentity(str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size,
                            stat.st_mtime_ns)


def sha256_file(path: Path) -> str:
    """The full sha256 of a file (reads all of it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def marker_path(path: Path, markers: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return markers / f"{key}.json"


def cached_sha256(path: Path, markers: Path) -> str:
    """sha256 of `path`, from its marker in `markers` when the file is unchanged since."""
    identity = FileIdentity.of(path)
    marker = marker_path(path, markers)
    try:
        recorded = json.loads(marker.read_text())
        if recorded.get("identity") == asdict(identity):
            return str(recorded["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no marker, or a broken one: hash again
    sha256 = sha256_file(path)
    if FileIdentity.of(path) == identity:  # not rewritten while we read it
        record_sha256(marker, identity, sha256)
    return sha256


def record_sha256(marker: Path, identity: FileIdentity, sha256: str) -> None:
    """Write a marker atomically (a reader never sees half of one)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=marker.parent, prefix=".marker.", suffix=".partial")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump({"identity": asdict(identity), "sha256": sha256}, out)
        os.replace(temp, marker)
    finally:
        Path(temp).unlink(missing_ok=True)
