"""Ray Serve's HTTP proxy, speaking the API's errors: a middleware that runs in the proxy.

The replicas answer every request with the FastAPI app, so their errors are already OpenAI's
{"error": {...}} objects. Ray's proxy adds failures of its own that no replica sees: the
back-pressure refusal when every replica is at max_ongoing_requests and the proxy's queue is
full (503, plain text), a timeout (408), no live replica (503), and a replica whose process
dies. Before the response starts it sends a bare status; after a stream has started it just
ends the stream, which a client cannot tell from a finished answer. This middleware turns the
first kind into OpenAI's error body and ends a broken stream with an error event and
`data: [DONE]`, as a single `specdec serve` does when a generation fails.

Ray loads it into the proxy from the import path in RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
(PROXY_CALLBACK below), which must be in the cluster's environment when Serve starts. It acts
for every Serve application of the cluster: a stream is completed only if a specdec replica
sent it (REPLICA_HEADER), but any plain-text error of the proxy's becomes OpenAI's JSON.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.middleware import Middleware

PROXY_CALLBACK = "specdec.server.replica_proxy.proxy_middlewares"
REPLICA_HEADER = "x-specdec-replica"  # on every response of a specdec replica
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
DONE = b"data: [DONE]\n\n"
REPLICA_LOST = "the replica serving this request stopped before the answer was complete " \
    "(its process died or was stopped); retry the request"


def proxy_middlewares() -> list[Middleware]:
    """Ray Serve's proxy callback: the middlewares it wraps its HTTP app in."""
    return [Middleware(OpenAIErrors)]


class OpenAIErrors:
    """Pure ASGI: rewrites the proxy's own error responses; ends broken streams properly."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = _Response(send)
        try:
            await self.app(scope, receive, response.send)
        finally:
            await response.close()


class _Response:
    """One response on its way to the client, watched (and, for Ray's errors, rewritten)."""

    def __init__(self, send: Any):
        self._send = send
        self.started = False
        self.finished = False
        self.stream = False  # Server-Sent Events
        self.done = False  # the stream's `data: [DONE]` went out
        self._tail = b""
        self._held: dict | None = None  # a plain-text error's start, until its body is read
        self._held_body = b""

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers") or [])
            kind = headers.get(b"content-type", b"").split(b";")[0].strip()
            # only our streams: other Serve applications on the cluster may end theirs freely
            self.stream = kind == b"text/event-stream" and REPLICA_HEADER.encode() in headers
            if message["status"] >= 400 and kind != b"application/json":
                self._held = message
                return
        elif message["type"] == "http.response.body":
            if self._held is not None:
                self._held_body += message.get("body", b"")
                if not message.get("more_body", False):
                    await self._send_error(self._held["status"],
                                           self._held_body.decode("utf-8", "replace"),
                                           self._held.get("headers") or [])
                return
            if self.stream:
                self._tail = (self._tail + message.get("body", b""))[-len(DONE):]
                self.done = self._tail == DONE
                if not message.get("more_body", False):
                    self.finished = True
                    if not self.done:  # the stream ended early: say so before closing
                        await self._send({"type": "http.response.body",
                                          "body": _lost_event(), "more_body": False})
                        return
            elif not message.get("more_body", False):
                self.finished = True
        await self._send(message)

    async def close(self) -> None:
        """After the proxy's app returned (or raised): finish what it left unfinished."""
        if self.finished:
            return
        try:
            if not self.started:
                await self._send_error(503, REPLICA_LOST, [])
            elif self._held is not None:
                await self._send_error(self._held["status"], self._held_body.decode(
                    "utf-8", "replace"), self._held.get("headers") or [])
            elif self.stream:
                self.finished = True
                await self._send({"type": "http.response.body", "body": _lost_event(),
                                  "more_body": False})
        except Exception:  # noqa: BLE001 - the client is gone: nobody left to tell
            pass

    async def _send_error(self, status: int, text: str, headers: list) -> None:
        body = json.dumps(_error_body(status, text)).encode()
        kept = [(k, v) for k, v in headers if k.lower() in (b"retry-after", b"x-request-id")]
        self.finished = True
        self._held = None
        await self._send({"type": "http.response.start", "status": status,
                          "headers": [(b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode()), *kept]})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _error_body(status: int, text: str) -> dict:
    text = text.strip() or REPLICA_LOST
    if "backpressure" in text:
        return _body(f"server busy: every replica is at max_ongoing_requests and the queue "
                     f"is full ({text}); retry later", "rate_limit_error", "queue_full")
    code = {404: "not_found", 408: "timeout", 503: "unavailable"}.get(status)
    return _body(text, "server_error" if status >= 500 else "invalid_request_error", code)


def _body(message: str, kind: str, code: str | None) -> dict:
    """OpenAI's error object, as schemas.APIError.body() (not imported: it needs torch, and
    the proxy must start within Ray's 60 s)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _lost_event() -> bytes:
    body = _body(REPLICA_LOST, "server_error", "replica_lost")
    return f"data: {json.dumps(body)}\n\n".encode() + DONE
