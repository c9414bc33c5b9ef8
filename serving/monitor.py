"""The monitor: predictions joined with the targets they tried to predict, error over time.

The streaming predictor writes `predictions` (symbol, event time, prediction, version); the
feature pipeline writes `examples` once a target is known, H candles later. The monitor joins
the two by (symbol, event time), whichever arrives first, and keeps a rolling MAE per model
version and symbol with the naive baseline (predict no change) beside it. An ADWIN detector on
the newest version's errors raises drift alerts. Everything is exported as Prometheus metrics,
logged to MLflow, and drawn on the dashboard.

`Monitor` is pure; `MonitorService` feeds it from Kafka.

>>> m = Monitor(window=2)
>>> m.on_prediction(Prediction("X", 60.0, 0.01, 1, 0.0), arrived=100.0)
>>> m.on_example("X", 60.0, 0.03)
>>> m.joined, round(m.rolling_mae(1, "X"), 4), round(m.baseline_mae("X"), 4)
(1, 0.02, 0.03)
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict, deque
from typing import Any

from river import drift

from rtml.pipelines.training.learner import RollingMean
from rtml.records import Prediction

"""The features a naive forecast reads (`pipelines.targets`)."""

log = logging.getLogger(__name__)

ALL = "*"  # the symbol label of figures over all symbols

TOP_SYMBOLS = 10
"""Symbols per page of the error table, and per MLflow log: those that err most."""


def metric_label(symbol: str) -> str:
    """`symbol` as part of an MLflow metric key, which allows letters, digits and ``_-. /``.

    >>> metric_label("BTC/USD"), metric_label("<img src=x onerror=alert(1)>")
    ('BTC_USD', '_img_src_x_onerror_alert_1__')
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", symbol)[:100]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Monitor:
    """Joins predictions with realized targets; rolling errors, alerts, and chart series."""

    def __init__(
        self,
        window: int = 500,
        history: int = 2000,
        max_pending: int = 200_000,
        drift_delta: float = 0.002,
        max_versions: int = 8,
    ) -> None:
        self.window = window
        self.max_pending = max_pending
        self.drift_delta = drift_delta
        self.max_versions = max_versions
        """Versions kept in the errors table and the metrics: the most recently served ones."""
        # predictions waiting for their target, and targets waiting for their predictions
        self._predictions: OrderedDict[tuple[str, float], list[Prediction]] = OrderedDict()
        # (target, naive forecast) of examples whose prediction has not arrived yet
        self._targets: OrderedDict[tuple[str, float], tuple[float, float]] = OrderedDict()
        # per (model, version, symbol): the version's errors and, over the same examples, the
        # naive baseline's
        self._mae: dict[tuple[str, int, str], RollingMean] = {}
        self._mae_baseline: dict[tuple[str, int, str], RollingMean] = {}
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()  # oldest served first
        self._baseline: dict[str, RollingMean] = {}
        self.served = RollingMean(window)
        """Rolling MAE of whatever was served, across versions: what users got."""
        self._drift = drift.ADWIN(delta=drift_delta)
        self._drift_version: tuple[str, int] | None = None
        self.champion: int | None = None
        self.champion_model = ""
        self._registry_says = False  # the champion came from the registry, not from guessing
        self._newest_ts = -math.inf  # event time of the newest prediction
        self.joined = 0
        self.predictions = 0
        self.examples = 0
        self.expired = 0  # predictions whose target never came within max_pending
        self.rejected: dict[str, int] = {}
        self.last_record_at = math.nan
        # series for the dashboard, each bounded by `history` points
        self.price: dict[str, deque[tuple[float, float]]] = {}
        self.pairs: dict[str, deque[tuple[float, float, float, int]]] = {}
        # each joined error in arrival order (event time, version, error, naive's error): the
        # series the dashboard draws is computed from them in event-time order
        self.errors: deque[tuple[float, str, int, float, float]] = deque(maxlen=history)
        self.staleness: deque[tuple[float, float]] = deque(maxlen=history)
        self.champion_changes: deque[tuple[float, int]] = deque(maxlen=history)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=100)
        self._history = history

    # -- inputs ---------------------------------------------------------------------------------
    def on_prediction(self, p: Prediction, arrived: float | None = None) -> None:
        self.predictions += 1
        self._newest_ts = max(self._newest_ts, p.ts)
        self.last_record_at = time.time() if arrived is None else arrived
        # without the registry's word, the newest version seen is taken for the champion (an
        # older one is a replica not yet swapped); the registry's word also covers rollbacks
        if not self._registry_says and (self.champion is None or p.version > self.champion):
            self.set_champion(p.version, p.model, p.ts)
        if math.isfinite(p.trained_through):
            self.staleness.append((p.ts, p.ts - p.trained_through))
        key = (p.symbol, p.ts)
        known = self._targets.pop(key, None)
        if known is not None:
            self._score(p, *known)
            return
        self._predictions.setdefault(key, []).append(p)
        while len(self._predictions) > self.max_pending:
            _, dropped = self._predictions.popitem(last=False)
            self.expired += len(dropped)

    def on_example(self, symbol: str, ts: float, target: float, naive: float = 0.0) -> None:
        """The target of (symbol, ts) is known, and the naive forecast made at ts. Prices come
        from `features` (`on_price`): examples carry only the model's inputs."""
        self.examples += 1
        self.last_record_at = time.time()
        waiting = self._predictions.pop((symbol, ts), None)
        if waiting is None:
            self._targets[(symbol, ts)] = (target, naive)
            while len(self._targets) > self.max_pending:
                self._targets.popitem(last=False)
            return
        for p in waiting:
            self._score(p, target, naive)

    def on_price(self, symbol: str, ts: float, close: float | None) -> None:
        if close is None or not math.isfinite(close):
            return
        series = self.price.setdefault(symbol, deque(maxlen=self._history))
        if not series or ts > series[-1][0]:
            series.append((ts, close))

    def set_champion(self, version: int, model: str = "", ts: float | None = None) -> None:
        """The version predictors serve now; `ts` marks the change on the charts."""
        if (model, version) != (self.champion_model, self.champion):
            self.champion, self.champion_model = version, model
            at = ts if ts is not None else self._newest_ts
            if math.isfinite(at):
                self.champion_changes.append((at, version))

    def champion_from_registry(self, version: int, model: str = "") -> None:
        self._registry_says = True
        self.set_champion(version, model)

    def reject(self, topic: str) -> None:
        self.rejected[topic] = self.rejected.get(topic, 0) + 1

    # -- scoring ------------------------------------------------------------------------------
    def _keep(self, version: tuple[str, int]) -> None:
        """Remember `version` as just served; forget the least recently served beyond
        `max_versions` (never the champion), so tables and metric labels stay bounded."""
        self._seen[version] = None
        self._seen.move_to_end(version)
        while len(self._seen) > self.max_versions:
            oldest = next(v for v in self._seen if v != (self.champion_model, self.champion))
            del self._seen[oldest]
            for key in [k for k in self._mae if k[:2] == oldest]:
                del self._mae[key]
                del self._mae_baseline[key]

    def _score(self, p: Prediction, target: float, naive: float = 0.0) -> None:
        error, naive_error = abs(target - p.prediction), abs(target - naive)
        self.served.add(error)
        self._keep((p.model, p.version))
        for symbol in (p.symbol, ALL):
            key = (p.model, p.version, symbol)
            if key not in self._mae:
                self._mae[key] = RollingMean(self.window)
                self._mae_baseline[key] = RollingMean(self.window)
            self._mae[key].add(error)
            self._mae_baseline[key].add(naive_error)
            base = self._baseline.get(symbol)
            if base is None:
                base = self._baseline[symbol] = RollingMean(self.window)
            base.add(naive_error)
        self.joined += 1
        self.pairs.setdefault(p.symbol, deque(maxlen=self._history)).append(
            (p.ts, p.prediction, target, p.version)
        )
        self.errors.append((p.ts, p.model, p.version, error, naive_error))
        if (p.model, p.version) != (self.champion_model, self.champion):
            return
        if self._drift_version != (p.model, p.version):  # a new champion: a fresh detector
            self._drift = drift.ADWIN(delta=self.drift_delta)
            self._drift_version = (p.model, p.version)
        self._drift.update(error)
        if self._drift.drift_detected:
            alert = {
                "ts": p.ts,
                "model": p.model,
                "version": p.version,
                "symbol": p.symbol,
                "rolling_mae": self.rolling_mae(p.version, model=p.model),
                "baseline_mae": self.baseline_mae(ALL),
            }
            self.alerts.append(alert)
            log.warning("drift in the errors of version %s: %s", p.version, alert)

    def mae_series(self) -> list[tuple[float, int, float, float, str]]:
        """Error over time, in event time: the joined errors ordered by their event time, each
        point the rolling MAE of its served version and the naive forecast's, over the `window`
        errors before it. Partitions interleave as the monitor reads them; this order does not
        depend on that.

        >>> m = Monitor(window=2)
        >>> for ts, target in ((120.0, 0.03), (60.0, 0.01), (180.0, 0.05)):  # read out of order
        ...     m.on_prediction(Prediction("X", ts, 0.0, 1, 0.0), arrived=200.0)
        ...     m.on_example("X", ts, target)
        >>> [(t, round(mae, 3)) for t, _, mae, _, _ in m.mae_series()]
        [(60.0, 0.01), (120.0, 0.02), (180.0, 0.04)]
        """
        per_version: dict[tuple[str, int], RollingMean] = {}  # shards: one model each
        naive = RollingMean(self.window)
        out = []
        for ts, model, version, error, naive_error in sorted(self.errors, key=lambda e: e[0]):
            mean = per_version.setdefault((model, version), RollingMean(self.window))
            mean.add(error)
            naive.add(naive_error)
            out.append((ts, version, mean.mean, naive.mean, model))
        return out

    def rolling_mae(self, version: int, symbol: str = ALL, model: str = "") -> float:
        rolling = self._mae.get((model, version, symbol))
        return rolling.mean if rolling else math.nan

    def baseline_mae(self, symbol: str = ALL) -> float:
        rolling = self._baseline.get(symbol)
        return rolling.mean if rolling else math.nan

    @property
    def pending(self) -> int:
        return sum(len(v) for v in self._predictions.values())

    # -- outputs ------------------------------------------------------------------------------
    def ranked_symbols(self) -> list[str]:
        """Symbols by the rolling error of the version that served them most recently, the
        worst first (then by name)."""
        newest: dict[str, tuple[int, float]] = {}
        order = {v: i for i, v in enumerate(self._seen)}  # oldest first
        for (model, version, symbol), rolling in self._mae.items():
            if symbol == ALL:
                continue
            rank = order.get((model, version), -1)
            if symbol not in newest or rank > newest[symbol][0]:
                mean = rolling.mean
                newest[symbol] = (rank, mean if math.isfinite(mean) else -math.inf)
        return sorted(newest, key=lambda s: (-newest[s][1], s))

    def errors_table(self, top: int = TOP_SYMBOLS, page: int = 0) -> list[dict[str, Any]]:
        """Each recently served version beside the naive baseline over the same examples: the
        champion first, then the others, most recently served first; over all symbols, and
        for one page of `top` symbols ranked by error (`ranked_symbols`)."""
        champion = (self.champion_model, self.champion)
        order = {v: i for i, v in enumerate(reversed(self._seen))}
        shown = set(self.ranked_symbols()[page * top : (page + 1) * top]) | {ALL}

        def rank(key: tuple[str, int, str]) -> tuple[bool, int, bool, str]:
            version = key[:2]
            return (version != champion, order.get(version, len(order)), key[2] != ALL, key[2])

        return [
            {
                "model": model,
                "version": version,
                "symbol": symbol,
                "n": len(self._mae[(model, version, symbol)].values),
                "rolling_mae": _finite(self._mae[(model, version, symbol)].mean),
                "baseline_mae": _finite(self._mae_baseline[(model, version, symbol)].mean),
            }
            for model, version, symbol in sorted((k for k in self._mae if k[2] in shown), key=rank)
        ]

    def symbols(self) -> list[str]:
        return sorted(self.price.keys() | self.pairs.keys())

    def snapshot(
        self, points: int = 500, symbol: str | None = None, top: int = TOP_SYMBOLS, page: int = 0
    ) -> dict[str, Any]:
        """What the dashboard draws for one symbol (`symbol`, or the first by name), each series
        cut to its newest `points`, with one page of the error table: its size is bounded by
        `points` and `top`, whatever the number of symbols."""

        def tail(series: deque[Any] | None) -> list[Any]:
            return list(series or ())[-points:]

        names = self.symbols()
        chosen = symbol if symbol in self.price or symbol in self.pairs else None
        chosen = chosen if chosen is not None else (names[0] if names else None)
        ranked = len(self.ranked_symbols())
        return {
            "now": time.time(),
            "last_record_at": _finite(self.last_record_at),
            "champion": self.champion,
            "champion_model": self.champion_model,
            "served_mae": _finite(self.served.mean),
            "baseline_mae": _finite(self.baseline_mae(ALL)),
            "counts": {
                "predictions": self.predictions,
                "examples": self.examples,
                "joined": self.joined,
                "pending": self.pending,
                "expired": self.expired,
                "rejected": dict(self.rejected),
            },
            "symbols": names,
            "symbol": chosen,
            "price": {chosen: tail(self.price.get(chosen))} if chosen else {},
            "pairs": {chosen: tail(self.pairs.get(chosen))} if chosen else {},
            "mae": [
                [t, v, _finite(m), _finite(b), model]
                for t, v, m, b, model in self.mae_series()[-points:]
            ],
            "staleness": tail(self.staleness),
            "champion_changes": list(self.champion_changes),
            "errors": self.errors_table(top, page),
            "errors_page": page,
            "errors_pages": max(1, -(-ranked // max(top, 1))),
            "alerts": list(self.alerts),
        }

    def mlflow_metrics(self, top: int = TOP_SYMBOLS) -> dict[str, float]:
        """Rolling errors as MLflow metric keys (`monitor.mae.v3.BTC_USD`): each version's
        over all symbols, and over the `top` symbols that err most, so that a log is bounded
        whatever the number of symbols (the dashboard's table has them all)."""
        out = {"monitor.joined": float(self.joined), "monitor.alerts": float(len(self.alerts))}
        worst = set(self.ranked_symbols()[:top]) | {ALL}
        for (model, version, symbol), rolling in self._mae.items():
            if symbol not in worst:
                continue
            label = "all" if symbol == ALL else metric_label(symbol)
            name = f"{metric_label(model)}.v{version}" if model else f"v{version}"
            if math.isfinite(rolling.mean):
                out[f"monitor.mae.{name}.{label}"] = rolling.mean
        base = self.baseline_mae(ALL)
        if math.isfinite(base):
            out["monitor.baseline_mae.all"] = base
        return out
