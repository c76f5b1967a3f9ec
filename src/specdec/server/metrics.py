"""Prometheus metrics of the server: traffic, tokens, latencies and the speculative counters.

Each server gets its own registry, so several apps (tests) can live in one process.
Derived rates are computed from running totals at scrape time. The latency histograms carry
vLLM's metric names with our prefix (vllm:time_to_first_token_seconds is
specdec_time_to_first_token_seconds here, and so on) and vLLM's definitions: inter-token
latency is observed once per decoding step after the first, as vLLM does per engine step,
so a block of accepted drafts counts once; time per output token is per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from specdec.stats import GenerationStats

OUTCOMES = ("stop", "length", "cancelled", "error", "rejected", "invalid", "unauthorized")
# seconds; wide enough for a CPU running a 0.5B model and for a GPU alike
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160,
                   640)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                0.75, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 240, 480, 960, 1920)


class ServerMetrics:
    """Counters fed by the engine and the routes; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("specdec_requests", "Requests by outcome (stop, length, "
                                "cancelled, error, rejected = 429, invalid = 4xx, "
                                "unauthorized = 401)",
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
            buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            "specdec_inter_token_latency_seconds", "Between successive decoding steps of a "
            "request (each step sends one or more tokens)", buckets=STEP_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            "specdec_request_time_per_output_token_seconds", "Per request: (end - first "
            "token) / (tokens - 1)", buckets=STEP_BUCKETS, registry=r)
        self.e2e_latency = Histogram(
            "specdec_e2e_request_latency_seconds", "From queueing to the last token",
            buckets=REQUEST_BUCKETS, registry=r)
        self.queue_time = Histogram(
            "specdec_request_queue_time_seconds", "Waiting in the queue before generation",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "specdec_batch_size", "Requests decoded together per step",
            buckets=BATCH_BUCKETS, registry=r)
        self.step_tokens = Histogram(
            "specdec_step_tokens", "Tokens emitted per step, all requests of the batch",
            buckets=BATCH_BUCKETS, registry=r)
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

    def record_step(self, rows: int, tokens: int) -> None:
        """One decoding step of the batch: its rows and the tokens it emitted."""
        self.batch_size.observe(rows)
        self.step_tokens.observe(tokens)

    def record_latency(self, submitted: float, first_token: float, end: float,
                       tokens: int) -> None:
        """A finished request's end-to-end latency and time per output token."""
        self.e2e_latency.observe(end - submitted)
        if tokens > 1:
            self.time_per_output_token.observe((end - first_token) / (tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0
