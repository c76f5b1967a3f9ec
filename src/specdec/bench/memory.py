"""Peak resident memory growth while a function runs (Linux: sampled from /proc/self/statm).

ru_maxrss is a high-water mark for the whole process (model loading dominates it), so the
growth of one call is measured by sampling the current RSS from a thread while it runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def peak_rss_growth(function: Callable[[], T], interval_s: float = 0.001) -> tuple[T, int]:
    """(function's result, peak RSS during the call minus RSS before it, in bytes)."""
    before = current_rss()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, current_rss())
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = function()
    finally:
        done.set()
        sampler.join()
    return result, max(peak, current_rss()) - before
