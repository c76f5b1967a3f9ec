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

from specdec.batch import BatchDecoder
from specdec.decoding import SpeculativeDecoder
from specdec.models.rows import SingleRow, make_rows
from specdec.prompts import chat_ids
from specdec.sequence import Sequence
from specdec.server.jobs import Cancelled, Failed, Job, Streaming
from specdec.server.metrics import ServerMetrics

log = logging.getLogger("specdec.server")

DEFAULT_MAX_BATCH_SIZE = 16  # measured: see benchmarks/batch (16 beat 8 at 16 and 32 clients)


class QueueFullError(Exception):
    """The waiting queue is at its bound."""


class ShuttingDownError(Exception):
    """The server is stopping: no new requests."""


SHUTDOWN_MESSAGE = "the server is shutting down"


@dataclass(frozen=True)
class EngineConfig:
    max_queue: int = 64  # requests waiting (the running ones not counted)
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # requests decoded together per step


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
        self.metrics.bind_queue(lambda: len(self._waiting), lambda: len(self._active))
        # fast tokenizers are not safe to use from two threads at once
        self.tokenizer_lock = threading.Lock()
        self._waiting: deque[Job] = deque()
        self._active: dict[int, tuple[Sequence, Streaming]] = {}  # by id(sequence)
        self._wake = threading.Condition()
        self._stopping = False
        self._draining = False  # shutting down: nothing new starts
        self._deadline: float | None = None  # monotonic time running jobs must stop by
        self._thread: threading.Thread | None = None
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
        self._thread = threading.Thread(target=self._loop, name="specdec-engine", daemon=True)
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
            if self._draining or self._stopping:
                raise ShuttingDownError(SHUTDOWN_MESSAGE)
            # the free rows of the batch take requests at the next step; max_queue more wait
            free = max(0, self.max_batch_size - len(self._active))
            if len(self._waiting) >= self.config.max_queue + free:
                raise QueueFullError(f"server busy: {len(self._waiting)} requests waiting")
            self._waiting.append(job)
            self._wake.notify()

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
        return self._thread is not None and self._thread.is_alive() and not self._draining

    # --- the worker -------------------------------------------------------------------

    def _loop(self) -> None:
        batch = self._new_batch()
        while True:
            with self._wake:
                while not self._waiting and not self._active and not self._stopping \
                        and not self._draining:
                    self._wake.wait()
                if self._stopping or (not self._waiting and not self._active):
                    self._fail_running(f"{SHUTDOWN_MESSAGE}: generation stopped")
                    return
                joining = []
                while self._waiting and len(self._active) + len(joining) < self.max_batch_size:
                    joining.append(self._waiting.popleft())
            self._admit([job for job in joining if not job.cancelled.is_set()])
            if not self._active:
                continue
            try:
                with torch.inference_mode():
                    events = batch.step()
            except Exception as error:  # the batch's caches are suspect: fail it, start anew
                log.exception("decoding step failed")
                self._fail_running(f"generation failed: {error}", outcome="error", status=500)
                batch = self._new_batch()
                continue
            self.metrics.record_step(len(events), sum(len(e.tokens) for _, e in events))
            for sequence, event in events:
                self._deliver(sequence, event)
            self._drop_cancelled()
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._fail_running(f"{SHUTDOWN_MESSAGE}: generation stopped")

    def _new_batch(self) -> BatchDecoder:
        target = self.decoder.target
        rows = make_rows(target, self.max_batch_size) if self.max_batch_size > 1 else \
            SingleRow(target)
        self._active.clear()
        self._batch = self.decoder.batch(rows)
        return self._batch

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill joining jobs together; on a failure, one at a time (a bad request fails
        alone)."""
        assert self._batch is not None
        requests = [(torch.tensor([job.prompt_ids]), job.params) for job in jobs]
        try:
            with torch.inference_mode():
                added = self._batch.add_many(requests)
        except Exception as error:
            if len(jobs) == 1:
                self._fail_job(jobs[0], error)
                return
            for job in jobs:
                self._admit([job])
            return
        for job, sequence in zip(jobs, added, strict=True):
            streaming = Streaming(job, self.tokenizer, self.tokenizer_lock, self.metrics)
            self._active[id(sequence)] = (sequence, streaming)

    def _fail_job(self, job: Job, error: Exception) -> None:
        log.error("prefill failed", exc_info=error)  # one bad request must not stop the server
        self.metrics.record_outcome("error")
        job.emit(Failed(f"generation failed: {error}"))

    def _deliver(self, sequence: Sequence, event: Any) -> None:
        """Send one step's tokens of one job; finish it when it is done."""
        _, streaming = self._active[id(sequence)]
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
                      ) -> None:
        """Every running job gets an error (503 when stopping) and leaves the batch."""
        for sequence, streaming in list(self._active.values()):
            if not streaming.job.cancelled.is_set():
                self.metrics.record_generation(streaming.stats, streaming.sent, outcome)
                streaming.job.emit(Failed(f"{message} after {streaming.sent} tokens", status))
            self._leave(sequence)

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

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat rendered with the tokenizer's template, ready to answer."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise LookupError("this model has no chat template; use /v1/completions")
        with self.tokenizer_lock:
            return chat_ids(self.tokenizer, messages)  # ValueError if the template refuses
