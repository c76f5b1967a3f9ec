"""Replicas of the server on Ray Serve: N engines behind one HTTP endpoint, the same API.

Each replica is a Ray actor that loads the models, runs one Engine and serves the FastAPI app
of `create_app` as the deployment's ingress (Ray Serve's `@serve.ingress`): requests reach the
very routes a single `specdec serve` has. Ray's proxy spreads requests over the replicas,
bounds what each holds (max_ongoing_requests) and what waits for a free one
(max_queued_requests), restarts a replica whose process dies and, with autoscaling, adds and
removes replicas on load. The rest is here: a board (replica_metrics.Board) through which the
replicas share /metrics and receive the order to drain; check_health, so that Ray replaces a
replica whose decoding worker died; and an `x-specdec-replica` response header naming the
replica that answered, and the live replicas' count in /health. replica_proxy makes Ray's own
errors OpenAI's.

    from ray import serve
    from specdec.server.replicas import ReplicaOptions, deployment

    def build(metrics):  # runs in each replica
        engine = Engine(SpeculativeDecoder(load_model("qwen2.5-0.5b"), None), metrics=metrics)
        return engine, create_app(engine, "qwen")

    serve.run(deployment(build, ReplicaOptions(replicas=2)), route_prefix="/")
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from specdec.server.engine import Engine
from specdec.server.replica_metrics import PERIOD_S, Board, ClusterMetrics
from specdec.server.replica_proxy import REPLICA_HEADER

log = logging.getLogger("specdec.server")

# build(metrics) -> (engine, app): called once in every replica; the engine must use `metrics`
EngineBuilder = Callable[[ClusterMetrics], tuple[Engine, Any]]


@dataclass(frozen=True)
class ReplicaOptions:
    """How many replicas, what each may use and hold; see docs/replicas.md."""

    replicas: int = 1  # fixed count; the starting count when autoscaling
    cpus: float = 1.0  # Ray CPUs reserved per replica
    gpus: float = 0.0  # Ray GPUs per replica (fractions share one)
    max_ongoing_requests: int = 80  # per replica: running + waiting in its engine
    max_queued_requests: int = 64  # per proxy, waiting for a replica; more get 503
    min_replicas: int | None = None  # both set: autoscale between them on load
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None  # autoscaling aim per replica
    shutdown_grace: float = 3.0  # seconds a running request may take to finish on shutdown
    name: str = "specdec"

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_ongoing_requests < 1 or self.max_queued_requests < 1:
            raise ValueError("replicas, max_ongoing_requests and max_queued_requests must be "
                             ">= 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both min_replicas and max_replicas")
        if self.autoscaling and not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    def deployment_options(self) -> dict:
        """Keyword arguments of Ray Serve's Deployment.options()."""
        options: dict[str, Any] = {
            "name": self.name,
            "ray_actor_options": {"num_cpus": self.cpus, "num_gpus": self.gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            # Ray waits this long for running requests; the engine stops them sooner
            "graceful_shutdown_timeout_s": self.shutdown_grace + 5,
            "health_check_period_s": 2.0,
            # a replica that cannot load its models (a wrong path) will not on the 20th try
            "max_constructor_retry_count": 3,
        }
        if self.autoscaling:
            assert self.min_replicas is not None and self.max_replicas is not None
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": min(max(self.replicas, self.min_replicas),
                                        self.max_replicas),
                "target_ongoing_requests": self.target_ongoing_requests
                or max(1.0, self.max_ongoing_requests / 2)}
        else:
            options["num_replicas"] = self.replicas
        return options


@serve.ingress()
class SpecdecReplica:
    """One engine and its FastAPI app (the ingress), built by `build` inside the replica."""

    def __init__(self, build: EngineBuilder, board: DeploymentHandle):
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.metrics = ClusterMetrics(self.replica)
        self.engine, self._app = build(self.metrics)
        if self.engine.metrics is not self.metrics:
            raise ValueError("build(metrics) must give the engine the metrics it is passed")
        self._app.add_middleware(DeploymentHealth, replicas=self.live_replicas)
        self._app.add_middleware(ReplicaHeader, replica=self.replica)
        self._board = board
        self._draining = False
        self._poster = asyncio.get_running_loop().create_task(self._post_metrics())

    def live_replicas(self) -> int:
        """Replicas that posted to the board lately, this one included."""
        return 1 + len(self.metrics.others)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app

    async def check_health(self) -> None:
        """Ray restarts a replica whose decoding worker is gone (not one that drains)."""
        if not self._draining and not self.engine.healthy:
            raise RuntimeError("the decoding worker is not running")

    async def _post_metrics(self) -> None:
        while True:
            try:
                ongoing = self.engine.queue_length + int(self.engine.busy)
                live, drain = await self._board.post.remote(
                    self.replica, self.metrics.own_text(), ongoing, self._draining)
                self.metrics.others = {r: t for r, t in live.items() if r != self.replica}
                if drain is not None and not self._draining:
                    self._draining = True
                    unfinished = self.engine.shut_down(drain)
                    log.warning("replica %s draining: %d unfinished request(s) stop within "
                                "%gs", self.replica, unfinished, drain)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the board restarts; keep serving
                log.warning("replica %s: metrics board unreachable: %s", self.replica, error)
            await asyncio.sleep(PERIOD_S)


class ReplicaHeader:
    """Pure ASGI: names the replica that answered in every response."""

    def __init__(self, app: Any, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def send_named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named if scope["type"] == "http" else send)


class DeploymentHealth:
    """Pure ASGI: /health's body also says how many replicas are live (`replicas`)."""

    def __init__(self, app: Any, replicas: Callable[[], int]):
        self.app = app
        self.replicas = replicas

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/health":
            await self.app(scope, receive, send)
            return
        start: dict = {}
        body = bytearray()

        async def hold(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.extend(message.get("body", b""))

        await self.app(scope, receive, hold)
        try:
            data = {**json.loads(body), "replicas": self.replicas()}
            body[:] = json.dumps(data).encode()
        except ValueError:  # not the app's JSON: pass it on as it is
            pass
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length",
                                                     str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": bytes(body)})


Replica = serve.deployment(SpecdecReplica)
MetricsBoard = serve.deployment(Board, name="SpecdecBoard", num_replicas=1,
                                ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)


def deployment(build: EngineBuilder, options: ReplicaOptions | None = None) -> Any:
    """The Ray Serve application: replicas of build()'s app, and their board.

    build is pickled to every replica (a module-level function or a picklable object).
    Run it with `serve.run(app, name=..., route_prefix="/")`.
    """
    options = options or ReplicaOptions()
    return Replica.options(**options.deployment_options()).bind(build, MetricsBoard.bind())
