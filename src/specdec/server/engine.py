"""The worker that owns the models: continuous batching over a bounded FIFO queue.

Decoding is compute-bound and the target holds one batch of KV-cache rows, so a single
background thread runs the steps. Between steps, waiting requests join the batch (up to
max_batch_size) and finished or cancelled ones leave; each step drafts for every running
request and verifies them all in one target forward. Output goes back to each request's
asyncio queue one token at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from specdec.batch import BatchDecoder, RowFailure
from specdec.decoding import SpeculativeDecoder
from specdec.prompts import chat_ids
from specdec.runtime.rows import CacheBudgetError, Joining, SingleRow, make_rows
from specdec.sampling import SamplingParams
from specdec.sequence import Sequence, StepEvent
from specdec.server.jobs import Cancelled, Failed, Job, Streaming
from specdec.server.metrics import ServerMetrics

log = logging.getLogger("specdec.server")

DEFAULT_PREFILL_CHUNK = 128  # a joining prompt's positions per step while others stream
DEFAULT_MAX_BATCH_SIZE = 16  # measured: see benchmarks/batch (16 beat 8 at 16 and 32 clients)


class QueueFullError(Exception):
    """The waiting queue is at its bound."""


class ShuttingDownError(Exception):
    """The server is stopping: no new requests."""


class EngineStoppedError(Exception):
    """The worker stopped on a fatal error: nothing can be served (503)."""


SHUTDOWN_MESSAGE = "the server is shutting down"


@dataclass(frozen=True)
class EngineConfig:
    max_queue: int = 64  # requests waiting (the running ones not counted)
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # requests decoded together per step
    kv_cache_bytes: int | None = None  # the KV cache of all rows together (None: unbounded)
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK  # prompt positions prefilled between steps


class Engine:
    """Owns the decoder; runs up to max_batch_size jobs per step in a background thread."""

    def __init__(self, decoder: SpeculativeDecoder, config: EngineConfig | None = None,
                 metrics: ServerMetrics | None = None):
        if decoder.tokenizer is None:
            raise ValueError("the server needs a target model with a tokenizer")
        self.decoder = decoder
        self.tokenizer: Any = decoder.tokenizer
        self.config = config or EngineConfig()
        if self.config.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.config.max_batch_size}")
        self.metrics = metrics or ServerMetrics()
        self.metrics.bind_queue(lambda: len(self._waiting),
                                lambda: len(self._active) + len(self._filling))
        # fast tokenizers are not safe to use from two threads at once
        self.tokenizer_lock = threading.Lock()
        self._waiting: deque[Job] = deque()
        self._active: dict[int, tuple[Sequence, Streaming]] = {}  # by id(sequence)
        self._filling: list[tuple[Job, Joining]] = []  # prefilling, in pieces
        self._wake = threading.Condition()
        self._stopping = False
        self._draining = False  # shutting down: nothing new starts
        self._deadline: float | None = None  # monotonic time running jobs must stop by
        self._thread: threading.Thread | None = None
        self._fatal: str | None = None  # why the worker stopped, once it has
        self.max_batch_size = self.config.max_batch_size
        if self.max_batch_size > 1 and not decoder.batches():
            log.warning("batching needs the static runner and a drafter that forks; "
                        "running one request at a time")
            self.max_batch_size = 1
        self._batch: BatchDecoder | None = None  # the worker's; a failed step replaces it

    # --- queue ------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = self._draining = False
        self._deadline = None
        self._fatal = None
        self._new_batch()
        self._thread = threading.Thread(target=self._run, name="specdec-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Fail what waits, stop the running jobs after their step (503s), end the worker."""
        self.shut_down(0.0)
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def shut_down(self, grace: float) -> int:
        """Stop taking requests; fail the waiting ones now (503); running ones may finish
        within `grace` seconds, else they stop after the current step with a 503 error.

        Every client gets a last message (an error event on a stream). Returns the number of
        requests that will not finish. Call it on the event loop's thread.
        """
        with self._wake:
            self._draining = True
            deadline = time.monotonic() + max(0.0, grace)
            self._deadline = deadline if self._deadline is None else min(self._deadline,
                                                                           deadline)
            waiting = list(self._waiting)
            self._waiting.clear()
            self._wake.notify_all()
        for job in waiting:
            job.cancelled.set()
            self.metrics.record_outcome("cancelled")
            job.emit(Failed(f"{SHUTDOWN_MESSAGE}: request not started", 503))
        return len(waiting) + len(self._active)

    def submit(self, job: Job) -> None:
        """Queue job (FIFO); QueueFullError when max_queue requests already wait."""
        with self._wake:
            if self._fatal is not None:
                raise EngineStoppedError(self._fatal)
            if self._thread is None or not self._thread.is_alive():
                raise EngineStoppedError("the engine's worker is not running")
            if self._draining or self._stopping:
                raise ShuttingDownError(SHUTDOWN_MESSAGE)
            # the free rows of the batch take requests at the next step; max_queue more wait
            free = max(0, self.max_batch_size - len(self._active) - len(self._filling))
            if len(self._waiting) >= self.config.max_queue + free:
                raise QueueFullError(f"server busy: {len(self._waiting)} requests waiting")
            self._waiting.append(job)
            self._wake.notify()

    def check_fits(self, prompt_length: int, params: SamplingParams) -> None:
        """CacheBudgetError when the request alone needs more KV cache than the budget."""
        budget, batch = self.config.kv_cache_bytes, self._batch
        if budget is None or batch is None:
            return
        need = batch.alone_bytes(prompt_length, params)
        if need > budget:
            raise CacheBudgetError(
                f"the prompt's {prompt_length} tokens plus max_tokens={params.max_new_tokens} "
                f"need {need / 2**20:.1f} MiB of KV cache; this server's budget is "
                f"{budget / 2**20:.1f} MiB: ask for fewer tokens")

    def cancel(self, job: Job) -> None:
        """Stop job: dropped from the queue now, or stopped after the current step."""
        with self._wake:
            if job.cancelled.is_set():
                return
            job.cancelled.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.record_outcome("cancelled")
        job.emit(Cancelled())

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return bool(self._active)

    @property
    def healthy(self) -> bool:
        """The worker thread runs and takes requests."""
        return (self._thread is not None and self._thread.is_alive() and not self._draining
                and self._fatal is None)

    # --- the worker -------------------------------------------------------------------

    def _run(self) -> None:
        """The worker thread: the loop, and a fatal error never passes silently."""
        try:
            self._loop()
        except BaseException as error:  # reported to every client below
            log.critical("the engine's worker stopped", exc_info=error)
            self._die(f"the engine stopped: {error!r}")

    def _die(self, message: str) -> None:
        """Fail every waiting and running request (503); later submissions fail at once."""
        with self._wake:
            self._fatal = message
            waiting = list(self._waiting)
            self._waiting.clear()
        for job in waiting:
            self.metrics.record_outcome("error")
            job.emit(Failed(f"{message}: request not started", 503))
        self._fail_running(message, outcome="error", status=503, keep_rows=False)

    def _loop(self) -> None:
        batch = self._batch
        assert batch is not None, "start() makes the first batch"
        while True:
            with self._wake:
                while not self._work() and not self._stopping and not self._draining:
                    self._wake.wait()
                if self._stopping or not self._work():
                    self._fail_running(f"{SHUTDOWN_MESSAGE}: generation stopped")
                    return
                self._start_fitting(batch)
            self._prefill(batch)
            if not self._active:
                continue
            try:
                with torch.inference_mode():
                    events = batch.step()
            except Exception as error:  # the batch's caches are suspect: fail it, start anew
                log.exception("decoding step failed")
                self._fail_running(f"generation failed: {error}", outcome="error", status=500,
                                   keep_rows=False)
                batch = self._new_batch()
                continue
            self.metrics.record_step(len(events), sum(len(e.tokens) for _, e in events
                                                      if isinstance(e, StepEvent)))
            for sequence, event in events:
                self._deliver(sequence, event)
            self._drop_cancelled()
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._fail_running(f"{SHUTDOWN_MESSAGE}: generation stopped")

    def _work(self) -> bool:
        return bool(self._waiting or self._active or self._filling)

    def _new_batch(self) -> BatchDecoder:
        target, budget = self.decoder.target, self.config.kv_cache_bytes
        rows = make_rows(target, self.max_batch_size, budget) if self.max_batch_size > 1 \
            else SingleRow(target, budget)
        self._active.clear()
        self._filling.clear()
        self._batch = self.decoder.batch(rows)
        return self._batch

    def _start_fitting(self, batch: BatchDecoder) -> None:
        """Begin the waiting jobs, in order, while rows and the KV cache budget allow (the
        caller holds the lock). A job that does not fit yet waits; those behind it too."""
        while self._waiting and len(self._active) + len(self._filling) < self.max_batch_size:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                continue
            if not batch.fits(len(job.prompt_ids), job.params):
                return
            self._waiting.popleft()
            try:
                joining = batch.begin(torch.tensor([job.prompt_ids]), job.params)
            except Exception as error:
                self._fail_job(job, error)
                continue
            self._filling.append((job, joining))

    def _prefill(self, batch: BatchDecoder) -> None:
        """Prefill the beginning jobs in order, at most prefill_chunk positions while others
        stream (a long prompt joins over several steps); finished ones join the batch."""
        budget = self.config.prefill_chunk if self._active else None
        for job, joining in list(self._filling):
            if budget is not None and budget <= 0:
                return
            try:
                if job.cancelled.is_set():
                    self._filling.remove((job, joining))
                    batch.abandon(joining)
                    continue
                with torch.inference_mode():
                    done = batch.prefill(joining, budget)
                    sequence = batch.join(joining, job.params) if joining.finished else None
            except Exception as error:  # this request's alone: the rows are untouched
                self._filling.remove((job, joining))
                batch.abandon(joining)
                self._fail_job(job, error)
                continue
            budget = None if budget is None else budget - done
            if sequence is not None:
                self._filling.remove((job, joining))
                streaming = Streaming(job, self.tokenizer, self.tokenizer_lock, self.metrics)
                self._active[id(sequence)] = (sequence, streaming)

    def _fail_job(self, job: Job, error: Exception) -> None:
        log.error("prefill failed", exc_info=error)  # one bad request must not stop the server
        self.metrics.record_outcome("error")
        job.emit(Failed(f"generation failed: {error}"))

    def _deliver(self, sequence: Sequence, event: StepEvent | RowFailure) -> None:
        """Send one step's tokens of one job; finish it when it is done."""
        _, streaming = self._active[id(sequence)]
        if isinstance(event, RowFailure):  # the row left the batch alone
            log.error("a request failed", exc_info=event.error)
            if not streaming.job.cancelled.is_set():
                self.metrics.record_generation(streaming.stats, streaming.sent, "error")
                streaming.job.emit(Failed(f"generation failed: {event.error} after "
                                          f"{streaming.sent} tokens"))
            self._leave(sequence)
            return
        if streaming.job.cancelled.is_set():
            return  # dropped after the step
        try:
            reason = streaming.on_step(event)
            if reason is not None:
                streaming.finish(reason)
        except Exception as error:
            log.exception("streaming failed")
            self.metrics.record_outcome("error")
            streaming.job.emit(Failed(f"generation failed: {error}"))
            reason = "error"
        if reason is not None:
            self._leave(sequence)

    def _drop_cancelled(self) -> None:
        for sequence, streaming in list(self._active.values()):
            if streaming.job.cancelled.is_set():  # the request is gone
                self.metrics.record_generation(streaming.stats, streaming.sent, "cancelled")
                self._leave(sequence)

    def _leave(self, sequence: Sequence) -> None:
        del self._active[id(sequence)]
        batch = self._batch
        if batch is not None and sequence in batch.sequences:  # finished ones left already
            batch.remove(sequence)

    def _fail_running(self, message: str, outcome: str = "cancelled", status: int = 503,
                      keep_rows: bool = True) -> None:
        """Every running job gets an error (503 when stopping) and leaves the batch;
        keep_rows=False when the batch is dropped: its rows are not touched."""
        for sequence, streaming in list(self._active.values()):
            if not streaming.job.cancelled.is_set():
                self.metrics.record_generation(streaming.stats, streaming.sent, outcome)
                streaming.job.emit(Failed(f"{message} after {streaming.sent} tokens", status))
            if keep_rows:
                self._leave(sequence)
        self._active.clear()
        for job, joining in self._filling:
            if not job.cancelled.is_set():
                self.metrics.record_outcome(outcome)
                job.emit(Failed(f"{message}: request not started", status))
            if keep_rows and self._batch is not None:
                self._batch.abandon(joining)
        self._filling.clear()

    # --- prompts ----------------------------------------------------------------------

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a completion prompt (text or ids); ValueError if out of range."""
        with self.tokenizer_lock:
            ids = self.decoder.encode(prompt)
        return ids[0].tolist()

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (special tokens dropped, as in generated text)."""
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of a chat rendered with the tokenizer's template (showing `tools`),
        ready to answer."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise LookupError("this model has no chat template; use /v1/completions")
        with self.tokenizer_lock:
            # ValueError if the template refuses
            return chat_ids(self.tokenizer, messages, tools)
