"""The replicas' parts that need no cluster: options, the proxy middleware, merged metrics,
and `specdec serve --replicas` without Ray installed."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from specdec.cli import main
from specdec.cli.serve_options import build_parser, check_replica_arguments
from specdec.cli.serve_replicas import replica_args, replica_options
from specdec.server.replica_metrics import Board, ClusterMetrics
from specdec.server.replica_proxy import OpenAIErrors

SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-specdec-replica", b"r1")]


def parse(*flags: str):
    parser = build_parser()
    args = parser.parse_args(["--target", "t", *flags])
    check_replica_arguments(parser, args)
    return args


def test_replica_flags_become_ray_serve_options():
    args = parse("--replicas", "3", "--replica-cpus", "2", "--replica-gpus", "0.5",
                 "--max-ongoing-requests", "12", "--max-queue", "0")
    options = replica_options(args).deployment_options()
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert options["max_ongoing_requests"] == 12
    assert options["max_queued_requests"] == 1  # Ray's least
    own = replica_args(args, 12)
    assert own.threads == 2 and own.max_queue == 12  # the engine never refuses Ray's 12
    scaled = replica_options(parse("--replicas", "1", "--min-replicas", "2",
                                   "--max-replicas", "4")).deployment_options()
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"]["initial_replicas"] == 2
    assert scaled["autoscaling_config"]["max_replicas"] == 4
    # the default: what one server holds (its batch and its queue)
    assert replica_options(parse("--replicas", "1")).max_ongoing_requests == 16 + 64


@pytest.mark.parametrize("flags", [("--max-ongoing-requests", "4"), ("--ray-address", "auto"),
                                   ("--replicas", "0"), ("--replicas", "2", "--min-replicas",
                                                         "1"),
                                   ("--replicas", "2", "--min-replicas", "3",
                                    "--max-replicas", "2")])
def test_bad_replica_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit):
        parse(*flags)
    assert "replica" in capsys.readouterr().err


def test_without_ray_replicas_say_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    assert main(["serve", "--target", "x", "--replicas", "2"]) == 1
    assert "pip install 'specdec[cluster]'" in capsys.readouterr().err


def run_proxy(app) -> list[dict]:
    """What a client receives through OpenAIErrors around `app`."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(OpenAIErrors(app)({"type": "http", "path": "/v1/completions"}, receive, send))
    return sent


def body_of(sent: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_ray_backpressure_becomes_openai_error():
    async def proxy(scope, receive, send):  # what Ray's proxy sends on BackPressureError
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": b"Request dropped due to "
                    b"backpressure (num_queued_requests=1, max_queued_requests=1)."})

    sent = run_proxy(proxy)
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    error = json.loads(body_of(sent))["error"]
    assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"


def test_a_stream_cut_short_ends_with_an_error_event_and_done():
    async def proxy(scope, receive, send):  # the replica died after two events
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})

    body = body_of(run_proxy(proxy)).decode()
    events = [line[6:] for line in body.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "replica_lost"


def test_a_complete_stream_and_app_errors_pass_unchanged():
    whole = b"data: {}\n\ndata: [DONE]\n\n"

    async def proxy(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        await send({"type": "http.response.body", "body": whole, "more_body": False})

    assert body_of(run_proxy(proxy)) == whole

    async def foreign(scope, receive, send):  # another application's stream: its own rules
        await send({"type": "http.response.start", "status": 200, "headers": SSE[:1]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})

    assert body_of(run_proxy(foreign)) == b"data: 1\n\n"

    app_error = json.dumps({"error": {"message": "bad", "code": "x"}}).encode()

    async def refusing(scope, receive, send):  # the app's own 429: JSON already
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": app_error})

    assert body_of(run_proxy(refusing)) == app_error


def test_a_request_lost_before_its_answer_gets_503_json():
    async def proxy(scope, receive, send):  # Ray's proxy sends nothing for a dead replica
        raise RuntimeError("actor died")

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.disconnect"}

    with pytest.raises(RuntimeError):  # the error still propagates (Ray logs it) ...
        asyncio.run(OpenAIErrors(proxy)({"type": "http"}, receive, send))
    assert sent[0]["status"] == 503  # ... after the client got its answer
    assert json.loads(body_of(sent))["error"]["type"] == "server_error"


def test_metrics_of_every_replica_labelled_and_drain_tracked():
    board = Board()
    a, b = ClusterMetrics("a"), ClusterMetrics("b")
    a.record_outcome("stop")
    for _ in range(2):
        b.record_outcome("stop")
    board.post("b", b.own_text())
    live, drain = board.post("a", a.own_text())
    assert drain is None and set(live) == {"a", "b"}
    a.others = {r: t for r, t in live.items() if r != "a"}
    families = {f.name: f for f in text_string_to_metric_families(a.render().decode())}
    stops = {s.labels["replica"]: s.value for s in families["specdec_requests"].samples
             if s.labels.get("outcome") == "stop" and s.name.endswith("_total")}
    assert stops == {"a": 1.0, "b": 2.0}
    assert families["specdec_replicas"].samples[0].value == 2

    assert board.drain(1.5) == 2 and not board.drained()
    board.post("a", "", ongoing=0, draining=True)
    board.post("b", "", ongoing=1, draining=True)
    assert not board.drained()
    assert board.post("b", "", ongoing=0, draining=True)[1] == 1.5 and board.drained()


def test_serve_config_builder_takes_the_command_flags():
    from ray.serve import Application

    from specdec.cli.serve_replicas import app_builder

    assert isinstance(app_builder({"argv": "--target t --replicas 3 --replica-cpus 2"}),
                      Application)
    with pytest.raises(SystemExit):  # the flags are checked as the command checks them
        app_builder({"argv": "--target t --min-replicas 1"})


def test_health_says_how_many_replicas_are_live():
    from specdec.server.replicas import DeploymentHealth

    async def app(scope, receive, send):
        body = json.dumps({"status": "ok"}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(DeploymentHealth(app, lambda: 3)({"type": "http", "path": "/health"}, None,
                                                 send))
    body = body_of(sent)
    assert json.loads(body) == {"status": "ok", "replicas": 3}
    assert (b"content-length", str(len(body)).encode()) in sent[0]["headers"]
