"""OpenAI-compatible HTTP server over the speculative decoder (FastAPI + uvicorn)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specdec.server.app import create_app
    from specdec.server.engine import Engine, EngineConfig
    from specdec.server.metrics import ServerMetrics

__all__ = ["Engine", "EngineConfig", "ServerMetrics", "create_app"]

# Imported on first use, so that Ray Serve's proxy can load replica_proxy without torch.
_HOMES = {"Engine": "engine", "EngineConfig": "engine", "ServerMetrics": "metrics",
          "create_app": "app"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"specdec.server.{_HOMES[name]}"), name)
    raise AttributeError(name)
