"""A request's generation as the engine sees it: the job, its output channel, its text.

The worker thread turns decoding steps into items (text chunks, then Finished, Failed or
Cancelled) on the request's asyncio queue; `Streaming` holds one running job's text, stop
strings and timings between steps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from specdec.sampling import SamplingParams, TokenLogprob
from specdec.sequence import StepEvent
from specdec.server.metrics import ServerMetrics
from specdec.stats import GenerationStats
from specdec.stop import StoppingText


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


class Streaming:
    """A running job: its text so far (stop strings applied), counted and timed per step."""

    def __init__(self, job: Job, tokenizer: Any, tokenizer_lock: threading.Lock,
                 metrics: ServerMetrics):
        self.job = job
        self.tokenizer = tokenizer
        self.lock = tokenizer_lock
        self.metrics = metrics
        self.text = StoppingText(tokenizer, job.stops)
        self.stats = GenerationStats(prompt_tokens=len(job.prompt_ids))
        self.last_step: float | None = None
        self.started = time.perf_counter()
        metrics.queue_time.observe(self.started - job.submitted)

    @property
    def sent(self) -> int:
        return len(self.text.tokens)

    def on_step(self, event: StepEvent) -> str | None:
        """Send the step's tokens, one chunk each; the finish reason once the job is done."""
        self.stats = event.stats
        self._observe_step()
        for i, token in enumerate(event.tokens):  # a block goes out token by token
            with self.lock:
                offset = len(self.text.text.text)
                piece = self.text.push(token)
                info = None if event.logprobs is None else [
                    self._token_info(event.logprobs[i], offset)]
            if piece or info:
                self.job.emit(TextChunk(piece, info))
            if self.text.stopped:
                return "stop"
        return event.finish_reason if event.finished else None

    def finish(self, reason: str) -> None:
        """The last text and the Finished item; metrics of a completed request."""
        with self.lock:
            piece = self.text.flush()
        if piece:
            self.job.emit(TextChunk(piece))
        self.metrics.record_generation(self.stats, self.sent, reason)
        assert self.job.first_token_at is not None
        self.metrics.record_latency(self.job.submitted, self.job.first_token_at,
                                    time.perf_counter(), self.sent)
        self.job.emit(Finished(reason, len(self.job.prompt_ids), self.sent,
                               self.stats.to_dict()))

    def _observe_step(self) -> None:
        """Time to first token at the first step, inter-token latency at the others."""
        now = time.perf_counter()
        if self.last_step is None:
            self.job.first_token_at = now
            self.metrics.time_to_first_token.observe(now - self.job.submitted)
        else:
            self.metrics.inter_token_latency.observe(now - self.last_step)
        self.last_step = now

    def _token_info(self, logprob: TokenLogprob, offset: int) -> TokenInfo:
        decode = self.tokenizer.decode
        top = [(decode([t]), lp) for t, lp in logprob.top]
        return TokenInfo(decode([logprob.token]), logprob.logprob, top, offset)
