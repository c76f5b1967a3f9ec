"""FastAPI routes: the OpenAI-compatible API over one Engine. No decoding logic lives here."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from specdec.errors import InvalidParameter
from specdec.runtime.rows import CacheBudgetError
from specdec.server.auth import APIKeyMiddleware
from specdec.server.engine import Engine, EngineStoppedError, QueueFullError, ShuttingDownError
from specdec.server.jobs import Cancelled, Failed, Finished, Job, TextChunk
from specdec.server.responses import Shape
from specdec.server.schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    openapi_body,
    parse,
)

log = logging.getLogger("specdec.server")

DEFAULT_MAX_BODY = 1 << 20  # bytes of a request body


def create_app(engine: Engine, model_name: str, max_body_bytes: int = DEFAULT_MAX_BODY,
               api_key: str | None = None, public_metrics: bool = False) -> FastAPI:
    """The ASGI app serving `engine`'s model under the id `model_name`.

    With api_key, every path but /health (and /metrics when public_metrics) needs
    `Authorization: Bearer <api_key>`.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()

    if api_key is not None and not api_key.strip():
        raise ValueError("the API key is empty")
    app = FastAPI(title="specdec", lifespan=lifespan)
    _add_error_handlers(app, engine)
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key,
                           open_paths=("/health", "/metrics") if public_metrics else ("/health",),
                           on_reject=lambda: engine.metrics.record_outcome("unauthorized"))

    @app.get("/health")
    async def health() -> JSONResponse:
        # 503 once the worker is gone (or the server is stopping): a load balancer moves on
        ok = engine.healthy
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": model_name,
                             "queue_length": engine.queue_length, "busy": engine.busy},
                            status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "specdec",
                "max_model_len": engine.decoder.target.max_length}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions", openapi_extra=openapi_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        req = parse(CompletionRequest, await _read_body(request, max_body_bytes))
        _check_model(req.model, model_name)
        prompt = req.single_prompt()
        ids = _encode(lambda: engine.encode(prompt), "prompt")
        echo = (prompt if isinstance(prompt, str) else engine.decode(ids)) if req.echo else ""
        return await _generate(request, engine, req, ids,
                               Shape(model_name, chat=False, echo=echo))

    @app.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        req = parse(ChatCompletionRequest, await _read_body(request, max_body_bytes))
        _check_model(req.model, model_name)
        plan = req.tool_plan()
        ids = _encode(lambda: engine.encode_chat(req.chat(), None if plan is None else
                                                 plan.tools), "messages")
        return await _generate(request, engine, req, ids,
                               Shape(model_name, chat=True, tools=plan))

    return app


async def _generate(request: Request, engine: Engine, req, ids: list[int],
                    shape: Shape) -> Response:
    max_new = _max_new_tokens(req.max_tokens, len(ids), engine)
    try:
        params = req.sampling_params(max_new)
        params.check_vocabulary(engine.decoder.target.vocab_size)
        with engine.tokenizer_lock:  # compiling reads the tokenizer the worker decodes with
            engine.decoder.check_constraint(params)  # 400 naming response_format
        engine.check_fits(len(ids), params)
    except InvalidParameter as error:
        raise APIError(400, str(error), error.param) from None
    except CacheBudgetError as error:
        raise APIError(400, str(error), "max_tokens", code="kv_cache_budget") from None
    except ValueError as error:
        raise APIError(400, str(error)) from None
    job = Job(ids, params, req.stop_strings(), asyncio.get_running_loop())
    try:
        engine.submit(job)
    except QueueFullError as error:
        raise APIError(429, f"{error}; retry later", code="queue_full",
                       kind="rate_limit_error") from None
    except ShuttingDownError as error:
        raise APIError(503, str(error), code="shutting_down", kind="server_error") from None
    except EngineStoppedError as error:
        raise APIError(503, str(error), code="engine_stopped", kind="server_error") from None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(request, engine, job, shape, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    watcher = asyncio.create_task(_watch_disconnect(request, engine, job))
    try:
        pieces: list[str] = []
        logprobs = None if params.logprobs is None else []
        async for item in job.items():
            if isinstance(item, TextChunk):
                pieces.append(item.text)
                if logprobs is not None and item.logprobs:
                    logprobs.extend(item.logprobs)
            elif isinstance(item, Finished):
                return JSONResponse(shape.full("".join(pieces), item, logprobs))
            else:
                raise _item_error(item)
        raise APIError(500, "generation ended without a result", kind="server_error")
    finally:
        watcher.cancel()
        engine.cancel(job)  # no-op once finished


async def _sse(request: Request, engine: Engine, job: Job, shape: Shape,
               include_usage: bool) -> AsyncIterator[str]:
    """Server-Sent Events, one chunk per token; a disconnect cancels the job at once."""
    watcher = asyncio.create_task(_watch_disconnect(request, engine, job))
    try:
        for body in shape.opening():
            yield _event(body)
        async for item in job.items():
            if isinstance(item, TextChunk):
                yield _event(shape.chunk(item.text, logprobs=item.logprobs))
            elif isinstance(item, Finished):
                for body in shape.closing(item, include_usage):
                    yield _event(body)
            elif isinstance(item, Cancelled):
                return  # the client is gone (or the server is stopping)
            else:
                yield _event(_item_error(item).body())
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        engine.cancel(job)


async def _watch_disconnect(request: Request, engine: Engine, job: Job) -> None:
    """Cancel the job as soon as the client goes away (the body is already read)."""
    with suppress(asyncio.CancelledError):
        while (await request.receive())["type"] != "http.disconnect":
            pass
        engine.cancel(job)


def _event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _item_error(item: Failed | Cancelled) -> APIError:
    if isinstance(item, Failed):
        return APIError(item.status, item.message, kind="server_error",
                        code="shutting_down" if item.status == 503 else None)
    return APIError(503, "request cancelled: the server is shutting down", kind="server_error")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (before reading it when declared)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body over {limit} bytes", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"request body over {limit} bytes", code="body_too_large")
    return bytes(body)


def _check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise APIError(404, f"model {requested!r} does not exist; this server serves "
                       f"{served!r}", "model", code="model_not_found")


def _encode(encode, param: str) -> list[int]:
    try:
        return encode()
    except LookupError as error:  # no chat template
        raise APIError(400, str(error).strip("'\""), param, code="no_chat_template") from None
    except ValueError as error:
        raise APIError(400, str(error), param) from None


def _max_new_tokens(requested: int | None, prompt_len: int, engine: Engine) -> int:
    """requested, checked against the server's limit and the context; default: all room."""
    window = engine.decoder.target.max_length
    room = None if window is None else window - prompt_len
    if room is not None and room < 1:
        raise APIError(400, f"the prompt has {prompt_len} tokens; the model's context is "
                       f"{window} tokens", "prompt", code="context_length_exceeded")
    limit = engine.config.max_tokens_limit
    if requested is None:
        return limit if room is None else min(limit, room)
    if requested > limit:
        raise APIError(400, f"max_tokens={requested} is over this server's limit of {limit}",
                       "max_tokens")
    if room is not None and requested > room:
        raise APIError(400, f"max_tokens={requested} plus the prompt's {prompt_len} tokens "
                       f"exceeds the model's context of {window} tokens", "max_tokens",
                       code="context_length_exceeded")
    return requested


def _add_error_handlers(app: FastAPI, engine: Engine) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        if error.status < 500:  # 5xx were counted as errors where they happened
            engine.metrics.record_outcome("rejected" if error.status == 429 else "invalid")
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        body = APIError(error.status_code, str(error.detail), code="not_found"
                        if error.status_code == 404 else None).body()
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=error)
        body = APIError(500, "internal server error", kind="server_error").body()
        return JSONResponse(body, status_code=500)
