"""API key check: `Authorization: Bearer KEY` on every path but the open ones (ASGI layer).

A pure ASGI middleware rather than FastAPI's @middleware, which wraps `receive` and would get
in the way of the routes' disconnect watching during streaming.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection
from typing import Any

from starlette.responses import JSONResponse

from specdec.server.schemas import APIError


class APIKeyMiddleware:
    """401 with OpenAI's error body unless the request carries the key; `on_reject` counts."""

    def __init__(self, app: Any, api_key: str, open_paths: Collection[str] = ("/health",),
                 on_reject: Callable[[], None] | None = None):
        if not api_key:
            raise ValueError("the API key is empty")
        self.app = app
        self.key = api_key.encode()
        self.open_paths = frozenset(open_paths)
        self.on_reject = on_reject

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if self.on_reject is not None:
            self.on_reject()
        error = APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                         code="invalid_api_key")
        response = JSONResponse(error.body(), status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _allowed(self, scope: dict) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # constant-time comparison: the time taken says nothing about the key
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
