"""What the machine is doing: cores, load average, and a warning when threads will contend.

torch's intra-op threads wait for each other at every operation: when another job holds a
core, a 2-thread forward waits on a descheduled thread (here: 0.8 tok/s with 2 threads on a
busy 2-core machine against 10.2 tok/s with --threads 1).
"""

from __future__ import annotations

import os


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15-minute load averages, None where the OS has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def contention_warning(threads: int, cores: int | None = None,
                       load: float | None = None) -> str | None:
    """A one-line warning when `threads` exceed the cores left idle by other jobs, else None.

    cores and load default to this machine's (load: the 1-minute load average).
    """
    cores = cpu_count() if cores is None else cores
    if load is None:
        averages = load_average()
        if averages is None:
            return None
        load = averages[0]
    idle = max(1, int(cores - load + 0.5))
    if threads <= idle:
        return None
    return (f"warning: torch uses {threads} threads but the load average is {load:.1f} on "
            f"{cores} cores (about {idle} idle): threads that wait for a busy core can slow "
            f"decoding 10x; pass --threads {idle}")
