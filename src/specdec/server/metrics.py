"""Prometheus metrics of the server: traffic, tokens and the speculative counters.

Each server gets its own registry, so several apps (tests) can live in one process.
Derived rates are computed from running totals at scrape time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from specdec.stats import GenerationStats

OUTCOMES = ("stop", "length", "cancelled", "error", "rejected", "invalid")


class ServerMetrics:
    """Counters fed by the engine and the routes; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("specdec_requests", "Requests by outcome "
                                "(stop, length, cancelled, error, rejected = 429, invalid = 4xx)",
                                ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.prompt_tokens = Counter("specdec_prompt_tokens", "Prompt tokens", registry=r)
        self.generated = Counter("specdec_generated_tokens", "Tokens sent to clients",
                                 registry=r)
        self.drafted = Counter("specdec_drafted_tokens", "Draft tokens proposed", registry=r)
        self.accepted = Counter("specdec_accepted_tokens", "Draft tokens accepted", registry=r)
        self.target_calls = Counter("specdec_target_calls", "Target forwards (steps)",
                                    registry=r)
        Gauge("specdec_acceptance_rate", "Accepted / drafted tokens since start",
              registry=r).set_function(lambda: _ratio(self._accepted, self._drafted))
        Gauge("specdec_mean_accepted_length", "Mean draft tokens accepted per target call",
              registry=r).set_function(lambda: _ratio(self._accepted, self._calls))
        Gauge("specdec_tokens_per_target_call", "Mean tokens emitted per target call",
              registry=r).set_function(lambda: _ratio(self._generated, self._calls))
        self.by_position = Gauge("specdec_acceptance_by_position",
                                 "Acceptance rate of the i-th draft token (0-based)",
                                 ["position"], registry=r)
        self.queue_length = Gauge("specdec_queue_length", "Requests waiting", registry=r)
        self.running = Gauge("specdec_running", "Requests generating now", registry=r)
        self.time_to_first_token = Histogram(
            "specdec_time_to_first_token_seconds", "From queueing to the first token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self._lock = threading.Lock()
        self._drafted = self._accepted = self._calls = self._generated = 0
        self._drafted_at: list[int] = []
        self._accepted_at: list[int] = []

    def bind_queue(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        self.queue_length.set_function(waiting)
        self.running.set_function(running)

    def record_outcome(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()

    def record_generation(self, stats: GenerationStats, sent: int, outcome: str) -> None:
        """Add one generation's counters; sent = tokens the client got."""
        self.record_outcome(outcome)
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generated.inc(sent)
        self.drafted.inc(stats.drafted)
        self.accepted.inc(stats.accepted)
        self.target_calls.inc(stats.target_calls)
        with self._lock:
            self._drafted += stats.drafted
            self._accepted += stats.accepted
            self._calls += stats.target_calls
            self._generated += sent
            for i, (d, a) in enumerate(zip(stats.drafted_at, stats.accepted_at, strict=True)):
                if i == len(self._drafted_at):
                    self._drafted_at.append(0)
                    self._accepted_at.append(0)
                self._drafted_at[i] += d
                self._accepted_at[i] += a
                self.by_position.labels(str(i)).set(self._accepted_at[i] / self._drafted_at[i])

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0
