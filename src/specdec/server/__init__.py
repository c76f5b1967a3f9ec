"""OpenAI-compatible HTTP server over the speculative decoder (FastAPI + uvicorn)."""

from specdec.server.app import create_app
from specdec.server.engine import Engine, EngineConfig
from specdec.server.metrics import ServerMetrics

__all__ = ["Engine", "EngineConfig", "ServerMetrics", "create_app"]
