"""The monitor as a service: `predictions`, `examples` and `features` in; the dashboard,
Prometheus and MLflow out."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Message
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rtml import registry
from rtml.consumers import GroupSource
from rtml.event_time import EventTimes
from rtml.kafka import (
    Topics,
    ensure_topics,
    make_consumer,
    make_producer,
)
from rtml.metrics import Counters
from rtml.pipelines.features.indicators import FEATURE_BOUNDS, out_of_bounds
from rtml.pipelines.features.targets import target
from rtml.records import BadRecord, examples_reader, features_reader, parse_prediction
from rtml.runner import Hooks, Pace, Runner
from rtml.settings import Settings

from .model_holder import BASELINE
from .monitor import Monitor

log = logging.getLogger(__name__)

_PRICES = features_reader(("close",), {"close": (0.0, 1e30)})
"""The monitor reads of `features` only the price it shows."""


class MonitorCollector(Collector):
    """Prometheus metrics read from the monitor at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        m = self.monitor
        mae = GaugeMetricFamily(
            "rtml_monitor_rolling_mae",
            "Rolling mean absolute error per model version and symbol (recently served only)",
            labels=["model", "version", "symbol"],
        )
        base = GaugeMetricFamily(
            "rtml_monitor_baseline_rolling_mae",
            "Rolling MAE of the naive baseline (no change)",
            labels=["symbol"],
        )
        for row in m.errors_table():
            if row["rolling_mae"] is not None:
                mae.add_metric(
                    [row["model"], str(row["version"]), row["symbol"]], row["rolling_mae"]
                )
        for symbol in m._baseline:
            if math.isfinite(m.baseline_mae(symbol)):
                base.add_metric([symbol], m.baseline_mae(symbol))
        yield mae
        yield base
        yield CounterMetricFamily("rtml_monitor_joined", "Predictions scored", value=m.joined)
        yield CounterMetricFamily(
            "rtml_monitor_expired", "Predictions dropped before their target came", value=m.expired
        )
        yield CounterMetricFamily(
            "rtml_monitor_drift_alerts", "Drift alerts raised", value=len(m.alerts)
        )
        rejected = CounterMetricFamily(
            "rtml_monitor_rejected", "Records sent to a DLQ", labels=["topic"]
        )
        for topic, n in m.rejected.items():
            rejected.add_metric([topic], n)
        yield rejected
        yield GaugeMetricFamily(
            "rtml_monitor_pending", "Predictions waiting for their target", value=m.pending
        )
        if m.champion is not None:
            yield GaugeMetricFamily(
                "rtml_monitor_champion_version",
                "The champion version being served",
                value=m.champion,
            )


class MonitorService:
    """Feeds a Monitor from `predictions`, `examples` and `features`; logs to MLflow."""

    def __init__(
        self, settings: Settings, monitor: Monitor | None = None, group_id: str = "rtml-monitor"
    ) -> None:
        self.settings = settings
        self.monitor = monitor or Monitor(
            settings.metrics_window, settings.monitor_history, drift_delta=settings.drift_delta
        )
        self.group_id = group_id
        self.label = target(settings.target)
        # of `examples`, the target and what the naive forecast reads
        self._examples = examples_reader(self.label.naive_reads, FEATURE_BOUNDS, (-1e30, 1e30))
        self.topics = Topics.of(settings)
        self.symbols = frozenset(settings.symbols).union(*settings.shards.values())
        self.event_times = EventTimes(
            settings.max_future_bound_s, max_silence_s=settings.max_silence_bound_s
        )
        self.stop = threading.Event()
        self.counters = Counters("monitor")
        self.lock = threading.Lock()  # the dashboard reads while the loop writes
        self._run_id: str | None = None
        self.decision: dict[str, Any] | None = None  # who set the champion, when
        self._last_log = time.monotonic()
        self._step = 0

    def step(self, msg: Message) -> None:
        topic, raw, m = msg.topic() or "", msg.value() or b"", self.monitor
        if topic == self.topics.predictions:
            prediction = parse_prediction(raw)
            self._known(prediction.symbol, prediction.ts)
            if (beyond := out_of_bounds({}, prediction.prediction)) is not None:
                raise BadRecord("out_of_range", f"the prediction's {beyond}")
            with self.lock:
                m.on_prediction(prediction)
        elif topic == self.topics.examples:
            ex = self._examples.read(raw)
            self._known(ex.symbol, ex.label_ts)
            if (beyond := out_of_bounds(ex.features, ex.target)) is not None:
                raise BadRecord("out_of_range", beyond)
            naive = self.label.naive(ex.features)
            with self.lock:
                m.on_example(ex.symbol, ex.ts, ex.target, naive)
        else:
            row = _PRICES.read(raw)
            self._known(row.symbol, row.ts)
            with self.lock:
                m.on_price(row.symbol, row.ts, row.values.get("close"))

    def _rejected(self, topic: str, kind: str) -> None:
        del kind
        with self.lock:
            self.monitor.reject(topic)

    def _tick(self) -> None:
        if time.monotonic() - self._last_log >= self.settings.monitor_log_interval_s:
            self._last_log = time.monotonic()
            self.log_to_mlflow()
            self.read_decision()

    def _known(self, symbol: str, ts: float) -> None:
        """The monitor keeps state per symbol and event time: only for configured symbols, and
        not for a time far in the future (it would stay the symbol's newest)."""
        if symbol not in self.symbols:
            raise BadRecord("unknown_symbol", f"{symbol!r:.60} is not in RTML_SYMBOLS")
        self.event_times.admit(symbol, ts)

    def log_to_mlflow(self) -> None:
        """Log the rolling errors to the `monitor` run; a registry outage only costs a point."""
        import mlflow
        from mlflow.entities import Metric as MlflowMetric

        with self.lock:
            metrics = self.monitor.mlflow_metrics()
        self._step += 1
        try:
            client = mlflow.MlflowClient(self.settings.mlflow_uri)
            if self._run_id is None:
                # one run per monitor start, named for what it watches
                watched = self.settings.topic_prefix or self.settings.model_name
                started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
                name = f"monitor {watched} {started}"
                run = client.create_run(registry.typed_experiment(self.settings), run_name=name)
                self._run_id = run.info.run_id
            now = int(time.time() * 1000)
            client.log_batch(
                self._run_id, [MlflowMetric(k, v, now, self._step) for k, v in metrics.items()]
            )
        except Exception as exc:  # MLflow down must not stop monitoring
            log.warning("could not log monitor metrics to MLflow: %s", exc)

    def read_decision(self) -> None:
        """Who set the champion and when, from the registry, for the dashboard."""
        from rtml import registry

        try:
            self.decision = registry.decision(self.settings)
            champion = registry.alias_version(self.settings, registry.CHAMPION)
            # a model not registered yet has no word on the champion: predictions tell
            known = champion is not None or registry.registered(self.settings)
        except Exception as exc:  # MLflow down must not stop monitoring
            log.warning("could not read the champion's decision from MLflow: %s", exc)
            return
        if known and not self.settings.shards:
            with self.lock:
                if champion is None:  # predictors serve the naive baseline
                    self.monitor.champion_from_registry(0, BASELINE)
                else:
                    self.monitor.champion_from_registry(int(champion), self.settings.model_name)

    def run(self, max_seconds: float | None = None) -> Monitor:
        settings = self.settings
        self.read_decision()
        ensure_topics(settings, self.topics.with_dlqs())
        topics = [self.topics.predictions, self.topics.examples, self.topics.features]
        Runner(
            GroupSource(make_consumer(settings, self.group_id), topics),
            make_producer(settings),
            self.step,
            self.counters,
            stop=self.stop,
            dead_letters=[self.topics.predictions],
            pace=Pace(max_block_s=settings.kafka_max_poll_interval_ms / 3000),
            hooks=Hooks(tick=self._tick, on_reject=self._rejected),
        ).run(max_seconds)
        self.log_to_mlflow()
        return self.monitor
