"""sha256 of big files, hashed once: a marker records it with the file's identity.

Hashing a 491 MB GGUF costs about a second; a file whose device, inode, size, modification
and status-change times are unchanged since it was hashed has not been written to, so the
recorded digest is reused. Any change to those re-hashes (ctime cannot be set back by
`touch`, so restoring an edited file's mtime does not fool it). File times tick coarsely
(a few ms on Linux), so a file changed within `SETTLE_S` of now could be changed again
without its times moving: such a file is hashed but its digest not recorded yet, as git
does with "racily clean" index entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CHUNK = 8 << 20
SETTLE_S = 2.0  # a file's times must be this old before its digest is remembered


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file is rewritten or replaced."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @staticmethod
    def of(path: Path) -> FileIdentity:
        stat = path.stat()
        return FileIdentity(str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size,
                            stat.st_mtime_ns, stat.st_ctime_ns)

    def settled(self, settle_s: float) -> bool:
        """Unchanged for settle_s: a later change must move its times."""
        return time.time_ns() - max(self.mtime_ns, self.ctime_ns) > settle_s * 1e9


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


def cached_sha256(path: Path, markers: Path, settle_s: float | None = None) -> str:
    """sha256 of `path`, from its marker in `markers` when the file is unchanged since
    (settle_s: SETTLE_S unless given)."""
    identity = FileIdentity.of(path)
    marker = marker_path(path, markers)
    try:
        recorded = json.loads(marker.read_text())
        if recorded.get("identity") == asdict(identity):
            return str(recorded["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no marker, or a broken one: hash again
    sha256 = sha256_file(path)
    if FileIdentity.of(path) == identity and identity.settled(
            SETTLE_S if settle_s is None else settle_s):
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
