"""Threads against a busy machine: default thread count and the starvation warning."""

import time

from specdec import machine


def test_idle_cores_and_default_threads():
    assert machine.idle_cores(cores=2, load=0.2) == 2
    assert machine.idle_cores(cores=2, load=1.6) == 1  # rounds: 0.4 idle -> 0 -> at least 1
    assert machine.idle_cores(cores=2, load=7.0) == 1
    assert machine.idle_cores(cores=16, load=4.4) == 12
    assert machine.default_threads(2, cores=2) == 2  # torch's default
    assert machine.default_threads(8, cores=2) == 2  # never above the cores it may use
    assert machine.default_threads(4, cores=16) == 4  # never above torch's


def test_starvation_warning_when_threads_got_too_little_cpu():
    # measured here: 2 threads on a busy 2-core machine got 34-39% of their CPU time
    warning = machine.starvation_warning(10.0, 7.0, 2, cores=2, load=2.5)
    assert warning is not None and "35%" in warning and "--threads 1" in warning
    lone = machine.starvation_warning(10.0, 3.0, 1, cores=2, load=4.0)
    assert lone is not None and "idle" in lone and "--threads" not in lone
    assert machine.starvation_warning(10.0, 19.0, 2, cores=2, load=0.3) is None  # got 95%
    assert machine.starvation_warning(10.0, 7.0, 1, cores=2, load=1.0) is None  # 70%: fine
    assert machine.starvation_warning(1.0, 0.1, 2, cores=2, load=3.0) is None  # too short


def test_cpu_meter_tells_working_from_waiting():
    meter = machine.CpuMeter()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    wall, cpu = meter.elapsed()
    assert wall >= 0.3 and cpu > 0.05  # the busy loop ran on a core (most of the time)
    meter = machine.CpuMeter()
    time.sleep(0.3)
    wall, cpu = meter.elapsed()
    assert wall >= 0.3 and cpu < 0.05  # sleeping takes no CPU


def test_int4_compute_dtype_default_and_override(monkeypatch):
    import pytest
    import torch

    from specdec.errors import UsageError
    from specdec.runtime.quantize import INT4_COMPUTE_ENV, int4_compute_dtype

    monkeypatch.delenv(INT4_COMPUTE_ENV, raising=False)
    assert int4_compute_dtype(torch.float32) == torch.bfloat16  # the documented default
    assert int4_compute_dtype(torch.bfloat16) == torch.bfloat16
    monkeypatch.setenv(INT4_COMPUTE_ENV, "float32")
    assert int4_compute_dtype(torch.float32) == torch.float32
    monkeypatch.setenv(INT4_COMPUTE_ENV, "int3")
    with pytest.raises(UsageError, match=INT4_COMPUTE_ENV):
        int4_compute_dtype(torch.float32)
