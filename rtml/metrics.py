"""What each component counts (read, done, rejected, by topic and class), and the Prometheus
endpoint that exports it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from rtml.settings import Settings

log = logging.getLogger(__name__)


class Counters:
    """What one component read (by topic), did (by outcome) and rejected (by topic and class).

    Plain integers, written by the loop and read at scrape time (`collect`).

    >>> c = Counters("trainer")
    >>> c.reject("examples", "future"); c.reject("examples", "future"); c.done["learned"] += 3
    >>> c.rejected_by("examples"), c.line()
    (Counter({'future': 2}), 'learned 3, rejected: examples future 2')
    """

    def __init__(self, component: str) -> None:
        self.component = component
        self.read: Counter[str] = Counter()
        self.done: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()  # (topic, class)

    def reject(self, topic: str, kind: str) -> None:
        self.rejected[topic, kind] += 1

    def rejected_by(self, topic: str | None = None) -> Counter[str]:
        """Rejections by class, of one topic or of all."""
        out: Counter[str] = Counter()
        for (t, kind), n in self.rejected.items():
            if topic is None or t == topic:
                out[kind] += n
        return out

    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def line(self) -> str:
        done = ", ".join(f"{k} {v}" for k, v in sorted(self.done.items()))
        bad = ", ".join(f"{t} {k} {v}" for (t, k), v in sorted(self.rejected.items())) or "none"
        return f"{done}, rejected: {bad}" if done else f"rejected: {bad}"

    def collect(self) -> Iterator[Metric]:
        """The counters as Prometheus metric families, labelled by component."""
        c = self.component
        read = CounterMetricFamily(
            "rtml_records_read", "Records read, by topic", labels=["component", "topic"]
        )
        for topic, n in sorted(self.read.items()):
            read.add_metric([c, topic], n)
        done = CounterMetricFamily(
            "rtml_records_done", "What records led to, by outcome", labels=["component", "outcome"]
        )
        for outcome, n in sorted(self.done.items()):
            done.add_metric([c, outcome], n)
        rejected = CounterMetricFamily(
            "rtml_records_rejected",
            "Records sent to a dead-letter topic (or only counted), by topic and class",
            labels=["component", "topic", "reason"],
        )
        for (topic, kind), n in sorted(self.rejected.items()):
            rejected.add_metric([c, topic, kind], n)
        yield from (read, done, rejected)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at scrape time only: the labels are not known up front


class MetricsServer:
    """Where a headless component's metrics are served (`port` None: nowhere); `close` stops
    serving."""

    def __init__(self, server: Any = None) -> None:
        self._server = server
        self.port: int | None = int(server.server_port) if server is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve_metrics(settings: Settings, *collectors: Any) -> MetricsServer:
    """Export `collectors` on `RTML_METRICS_HOST:RTML_METRICS_PORT` for a component
    without an HTTP API of its own; nowhere when it is not set. Port 0 takes a free one. A
    port in use is reported and the component runs on without metrics."""
    port = settings.metrics_port
    if port is None:
        return MetricsServer()
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    try:
        server, _ = start_http_server(port, addr=settings.metrics_host, registry=registry)
    except OSError as exc:
        log.warning(
            "metrics are not exported: port %s on %s is taken (%s). Give each process its own "
            "RTML_METRICS_PORT (0 picks a free one and logs it)",
            port,
            settings.metrics_host,
            exc,
        )
        return MetricsServer()
    served = MetricsServer(server)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, served.port)
    return served
