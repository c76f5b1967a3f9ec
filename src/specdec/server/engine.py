"""The worker that owns the models: one generation at a time, from a bounded FIFO queue.

Decoding is CPU-bound and the models hold one KV cache each, so a single background thread
runs the generations in arrival order. Output goes back to the request's asyncio queue one
token at a time; a cancelled request is dropped from the queue at once, or stopped between
decoding steps if it is running.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from specdec.decoding import SpeculativeDecoder
from specdec.prompts import chat_ids
from specdec.sampling import SamplingParams, TokenLogprob
from specdec.server.metrics import ServerMetrics
from specdec.stats import GenerationStats
from specdec.stop import StoppingText

log = logging.getLogger("specdec.server")


class QueueFullError(Exception):
    """The waiting queue is at its bound."""


class ShuttingDownError(Exception):
    """The server is stopping: no new requests."""


SHUTDOWN_MESSAGE = "the server is shutting down"


@dataclass
class TokenInfo:
    """One generated token's log-probability, for the response's logprobs."""

    text: str  # the token's own text
    logprob: float
    top: list[tuple[str, float]]  # the most likely alternatives (text, logprob)
    offset: int  # where the token's text starts in the generated text


@dataclass
class TextChunk:
    text: str  # new text of one token (may be "" while held back)
    logprobs: list[TokenInfo] | None = None  # when the request asked for them


@dataclass
class Finished:
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    stats: dict


@dataclass
class Failed:
    message: str
    status: int = 500  # HTTP status of the error (503: the server is shutting down)


@dataclass
class Cancelled:
    pass


Item = TextChunk | Finished | Failed | Cancelled


@dataclass
class Job:
    """One request's generation and the channel its output flows back through."""

    prompt_ids: list[int]
    params: SamplingParams
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def emit(self, item: Item) -> None:
        """Hand an item to the request (thread-safe; the loop may already be gone)."""
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, item)
        except RuntimeError:  # event loop closed: nobody is listening any more
            self.cancelled.set()

    async def items(self) -> AsyncIterator[Item]:
        """Items until the job ends (Finished, Failed or Cancelled is the last)."""
        while True:
            item = await self.outbox.get()
            yield item
            if not isinstance(item, TextChunk):
                return


@dataclass(frozen=True)
class EngineConfig:
    max_queue: int = 64  # requests waiting (the running one not counted)
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for


class Engine:
    """Owns the decoder; runs queued jobs one at a time in a background thread."""

    def __init__(self, decoder: SpeculativeDecoder, config: EngineConfig | None = None,
                 metrics: ServerMetrics | None = None):
        if decoder.tokenizer is None:
            raise ValueError("the server needs a target model with a tokenizer")
        self.decoder = decoder
        self.tokenizer: Any = decoder.tokenizer
        self.config = config or EngineConfig()
        self.metrics = metrics or ServerMetrics()
        self.metrics.bind_queue(lambda: len(self._waiting), lambda: int(self._running is not None))
        # fast tokenizers are not safe to use from two threads at once
        self.tokenizer_lock = threading.Lock()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._draining = False  # shutting down: nothing new starts
        self._deadline: float | None = None  # monotonic time the running job must stop by
        self._thread: threading.Thread | None = None

    # --- queue ------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = self._draining = False
        self._deadline = None
        self._thread = threading.Thread(target=self._loop, name="specdec-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Fail what waits, stop the running job after its step (503s), end the worker."""
        self.shut_down(0.0)
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def shut_down(self, grace: float) -> int:
        """Stop taking requests; fail the waiting ones now (503); the running one may finish
        within `grace` seconds, else it stops after its current step with a 503 error.

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
        return len(waiting) + int(self._running is not None)

    def submit(self, job: Job) -> None:
        """Queue job (FIFO); QueueFullError when max_queue requests already wait."""
        with self._wake:
            if self._draining or self._stopping:
                raise ShuttingDownError(SHUTDOWN_MESSAGE)
            if len(self._waiting) >= self.config.max_queue:
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
        return self._running is not None

    @property
    def healthy(self) -> bool:
        """The worker thread runs and takes requests."""
        return self._thread is not None and self._thread.is_alive() and not self._draining

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._stopping and not self._draining:
                    self._wake.wait()
                if self._stopping or not self._waiting:
                    return
                job = self._running = self._waiting.popleft()
            try:
                self._run(job)
            except Exception as error:  # one bad request must not take the server down
                log.exception("generation failed")
                self.metrics.record_outcome("error")
                job.emit(Failed(f"generation failed: {error}"))
            finally:
                with self._wake:
                    self._running = None

    # --- one generation ---------------------------------------------------------------

    def _run(self, job: Job) -> None:
        started = time.perf_counter()
        self.metrics.queue_time.observe(started - job.submitted)
        text = StoppingText(self.tokenizer, job.stops)
        reason, last_step = None, None
        stats = GenerationStats()
        for event in self.decoder.stream(job.prompt_ids, job.params):
            stats = event.stats
            last_step = self._observe_step(job, last_step)
            for i, token in enumerate(event.tokens):  # a block goes out token by token
                with self.tokenizer_lock:
                    offset = len(text.text.text)
                    piece = text.push(token)
                    info = None if event.logprobs is None else [
                        self._token_info(event.logprobs[i], offset)]
                if piece or info:
                    job.emit(TextChunk(piece, info))
                if text.stopped:
                    reason = "stop"
                    break
            if reason is None and event.finished:
                reason = event.finish_reason
            if reason is not None or job.cancelled.is_set():
                break
            if self._deadline is not None and time.monotonic() >= self._deadline:
                count = len(text.tokens)
                self.metrics.record_generation(stats, count, "cancelled")
                job.emit(Failed(f"{SHUTDOWN_MESSAGE}: generation stopped after {count} "
                                "tokens", 503))
                return
        count = len(text.tokens)
        if reason is None:  # cancelled mid-generation: the request is gone
            self.metrics.record_generation(stats, count, "cancelled")
            return
        if piece := text.flush():
            job.emit(TextChunk(piece))
        self.metrics.record_generation(stats, count, reason)
        assert job.first_token_at is not None
        self.metrics.record_latency(job.submitted, job.first_token_at, time.perf_counter(),
                                    count)
        job.emit(Finished(reason, len(job.prompt_ids), count, stats.to_dict()))

    def _token_info(self, logprob: TokenLogprob, offset: int) -> TokenInfo:
        decode = self.tokenizer.decode
        top = [(decode([t]), lp) for t, lp in logprob.top]
        return TokenInfo(decode([logprob.token]), logprob.logprob, top, offset)

    def _observe_step(self, job: Job, last_step: float | None) -> float:
        """Time to first token at the first step, inter-token latency at the others."""
        now = time.perf_counter()
        if last_step is None:
            job.first_token_at = now
            self.metrics.time_to_first_token.observe(now - job.submitted)
        else:
            self.metrics.inter_token_latency.observe(now - last_step)
        return now

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
