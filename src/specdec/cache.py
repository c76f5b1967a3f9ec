"""Where specdec keeps what it downloads, converts, compiles and measures."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SPECDEC_CACHE"


def cache_dir() -> Path:
    """$SPECDEC_CACHE, else $XDG_CACHE_HOME/specdec, else ~/.cache/specdec."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "specdec"
