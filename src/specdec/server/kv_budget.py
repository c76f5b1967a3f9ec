"""The KV cache's memory budget: `--kv-cache-memory` as bytes or a fraction of free memory."""

from __future__ import annotations

import os
import re

DEFAULT_KV_CACHE_MEMORY = "0.5"  # half the memory available once the models are loaded
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6,
          "mib": 2**20, "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}
MIN_BUDGET = 4096  # bytes: below one page is a typo


def parse_budget(text: str, available: int | None = None) -> int:
    """Bytes of `text`: a size ("8GiB", "512MB", "1000000") or a fraction in (0, 1] of the
    memory available now ("0.5"). ValueError with the reason otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"expected a size such as 8GiB or 512MB, or a fraction of the "
                         f"available memory such as 0.5; got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    if not unit and "." in match.group(1) or not unit and number <= 1:
        if not 0 < number <= 1:
            raise ValueError(f"a fraction of the available memory must be in (0, 1], got "
                             f"{text!r}")
        free = available_memory() if available is None else available
        size = int(number * free)
    else:
        size = int(number * _UNITS[unit])
    if size < MIN_BUDGET:
        raise ValueError(f"{text!r} is {size} bytes: the KV cache needs at least "
                         f"{MIN_BUDGET} bytes")
    return size


def available_memory() -> int:
    """Bytes the kernel says can be used without swapping (MemAvailable), else total RAM."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
