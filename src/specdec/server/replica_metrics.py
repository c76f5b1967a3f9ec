"""/metrics across replicas: each replica's samples, labelled `replica="<id>"`, on every one.

Ray Serve sends a scrape of /metrics to one replica, which by itself knows only its own
counters. So every replica posts its own exposition text to a board about once a second and
reads the others' back; its /metrics is then the union, each sample carrying a `replica`
label (Prometheus' convention for several instances of one job: `sum without (replica)`
aggregates). A replica that stops posting drops out after STALE_S seconds, and a restarted one
starts its counters from zero under its new id, which Prometheus' rate() handles as a new
series. `specdec_replicas` counts the replicas reporting.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from specdec.server.metrics import ServerMetrics

PERIOD_S = 1.0  # how often a replica posts its metrics and reads the others'
STALE_S = 5.0  # a replica silent this long is gone


class ClusterMetrics(ServerMetrics):
    """A replica's metrics; `render()` also carries the other replicas' last posts."""

    def __init__(self, replica: str):
        super().__init__()
        self.replica = replica
        self.others: dict[str, str] = {}  # replica id -> its exposition text

    def own_text(self) -> str:
        return super().render().decode()

    def render(self) -> bytes:
        return merge({**self.others, self.replica: self.own_text()})


class Board:
    """Where replicas meet: their metrics, and the order to drain (from `specdec serve`)."""

    def __init__(self) -> None:
        self._posts: dict[str, tuple[float, str, int, bool]] = {}
        self._drain: float | None = None

    def post(self, replica: str, text: str, ongoing: int = 0, draining: bool = False,
             ) -> tuple[dict[str, str], float | None]:
        """Record replica's metrics, its requests in hand and whether it drains; returns the
        live replicas' texts and the drain grace (None: keep serving)."""
        now = time.monotonic()
        self._posts[replica] = (now, text, ongoing, draining)
        self._posts = {r: p for r, p in self._posts.items() if now - p[0] < STALE_S}
        return {r: p[1] for r, p in self._posts.items()}, self._drain

    def drain(self, grace: float) -> int:
        """Tell every replica to stop taking requests (as Ctrl-C on one server): waiting
        requests fail now, running ones get `grace` seconds. Returns the replicas told."""
        self._drain = grace if self._drain is None else min(self._drain, grace)
        return len(self._posts)

    def drained(self) -> bool:
        """Every live replica has begun draining and holds no request."""
        return all(draining and not ongoing for _, _, ongoing, draining in self._posts.values())


def merge(texts: dict[str, str]) -> bytes:
    """One exposition of several replicas' texts, each sample labelled with its replica."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
            merged.samples.extend(s._replace(labels={**s.labels, "replica": replica})
                                  for s in family.samples)
    count = Metric("specdec_replicas", "Replicas reporting metrics", "gauge")
    count.add_sample("specdec_replicas", {}, len(texts))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([count, *families.values()]))
    return generate_latest(registry)


class _Fixed:
    """A collector of ready-made metric families."""

    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families
