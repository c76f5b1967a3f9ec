"""Devices: parse `--device`, and synchronize before reading a clock.

A CUDA step is queued, not done, when the Python call returns: timings taken without a
synchronization measure the launch, not the work (they would make c and v look free).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from specdec.errors import UsageError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """A torch.device from 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"device must be {DEVICE_CHOICES}, got {spec!r}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise UsageError(f"device must be {DEVICE_CHOICES}, got {spec!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"device {spec!r}: CUDA is not available on this machine "
                         "(this torch build or its driver has no GPU)")
    count = torch.cuda.device_count()
    index = 0 if device.index is None else device.index
    if not 0 <= index < count:
        raise UsageError(f"device {spec!r}: this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Timestamps in device order: CUDA events on a GPU (no host sync to take one), else
    perf_counter. Read `seconds` only after the step's one synchronization."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()  # already complete after the step's sync: returns at once
            return start.elapsed_time(end) / 1000.0
        return end - start
