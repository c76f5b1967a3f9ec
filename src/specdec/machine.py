"""What the machine is doing: cores, load average, and a warning when threads will contend.

torch's intra-op threads wait for each other at every operation: when another job holds a
core, every forward waits on the thread that was descheduled, so on a busy machine more
threads can decode several times slower than fewer (benchmarks/HISTORY.md has measurements).
The load changes from minute to minute, so the default stays torch's (the physical cores,
within this process's CPU affinity) whatever the load, and a command runs the same way every
time; a start on a busy machine warns with the --threads value to use, and a decoding that got
well under its threads' CPU time says so afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field


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


def load_text(averages: tuple[float, float, float] | None) -> str:
    """The 1, 5 and 15-minute load averages as a report shows them ("unknown" without)."""
    return "unknown" if averages is None else ", ".join(f"{a:.2f}" for a in averages)


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores other jobs leave idle: cores minus the 1-minute load average, at least 1."""
    cores = cpu_count() if cores is None else cores
    if load is None:
        averages = load_average()
        load = 0.0 if averages is None else averages[0]
    return max(1, min(cores, int(cores - load + 0.5)))


def default_threads(available: int, cores: int | None = None) -> int:
    """Threads to use when the user chose none: torch's default (`available`: the physical
    cores), at most the cores this process may run on (its CPU affinity).

    Never the current load: the same command must run the same way whatever ran a minute
    ago. A busy machine gets `contention_warning` instead, naming the --threads to pass."""
    return max(1, min(available, cpu_count() if cores is None else cores))


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
    idle = idle_cores(cores, load)
    if threads <= idle:
        return None
    return (f"warning: torch uses {threads} threads but the load average is {load:.1f} on "
            f"{cores} cores (about {idle} idle): threads that wait for a busy core can slow "
            f"decoding 10x; pass --threads {idle}")


# below this share of the CPU time its threads asked for, decoding was starved (measured:
# 34-39% when 2 threads collapsed 3.5x; a lone thread on the same busy machine got 67-80%)
STARVED_SHARE = 0.6
MIN_WALL_SECONDS = 2.0  # shorter runs say little


@dataclass
class CpuMeter:
    """Wall and process CPU time since creation: how much of its threads' CPU it got."""

    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)

    def elapsed(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of all this process's threads) since creation."""
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def starvation_warning(wall: float, cpu: float, threads: int,
                       cores: int | None = None, load: float | None = None) -> str | None:
    """A one-line warning when `threads` got well under the CPU time they asked for over
    `wall` seconds (other jobs held the cores: tok/s collapsed), else None."""
    if wall < MIN_WALL_SECONDS or threads < 1:
        return None
    share = cpu / (wall * threads)
    if share >= STARVED_SHARE:
        return None
    idle = idle_cores(cores, load)
    advice = f"pass --threads {idle}" if idle < threads else \
        "rerun when the machine is idle"
    return (f"warning: decoding got {share:.0%} of the CPU time its {threads} thread(s) asked "
            f"for: other jobs held the cores, so the speed above is not this machine's; "
            f"{advice}")


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process together kept the cores busy since boot (Linux: /proc/stat;
    steal, the time other virtual machines took, counts as busy), None where unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
        # user nice system idle iowait irq softirq steal
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and its waited-for children."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


@dataclass
class OtherJobsMeter:
    """How many cores other processes kept busy while this one ran, measured, not inferred.

    The load average cannot say it: it counts this run's own threads and lags by a minute,
    so the minute of model loading before a run reads as load "before" it.
    """

    busy: Callable[[], float | None] = busy_cpu_seconds
    own: Callable[[], float] = own_cpu_seconds
    clock: Callable[[], float] = time.perf_counter

    def __post_init__(self) -> None:
        self.wall0, self.busy0, self.own0 = self.clock(), self.busy(), self.own()

    def other_cores(self) -> float | None:
        """Mean cores held by other processes since creation; None where unknown."""
        busy, wall = self.busy(), self.clock() - self.wall0
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        return max(0.0, (busy - self.busy0) - (self.own() - self.own0)) / wall
