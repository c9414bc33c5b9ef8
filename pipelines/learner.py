"""The trainer's state: a River model, what it has learned, and its progressive metrics.

Pure: no I/O. Every example is first predicted, scored (beside a naive baseline that predicts
no change), then learned, so the metrics are honest out-of-sample errors. An example at or
before the newest one learned for its symbol is skipped: the feature pipeline delivers at least
once, and the warm start has already learned everything up to its cutoff.

>>> from rtml.pipelines.models import build_model
>>> learner = Learner(build_model("linear"), window=3)
>>> learner.step(parse_example({"symbol": "X", "ts": 60, "label_ts": 360,
...     "features": {"ret_1": 0.01}, "target": 0.02}))
True
>>> learner.step(parse_example({"symbol": "X", "ts": 60, "label_ts": 360,
...     "features": {"ret_1": 0.01}, "target": 0.02}))
False
>>> learner.learned, round(learner.metrics()["mae"], 4)
(1, 0.02)
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from river import drift

from rtml.pipelines.processor import Example
from rtml.pipelines.trades import BadRecord, decode_object

_NUMBER = (float, int)


def parse_example(raw: bytes | dict[str, Any]) -> Example:
    """Validate an `examples` record; raises BadRecord naming what is wrong."""
    record = decode_object(raw) if isinstance(raw, bytes) else raw
    if not isinstance(record, dict):
        raise BadRecord("not_json", "expected a JSON object")
    try:
        symbol, ts, label_ts = record["symbol"], record["ts"], record["label_ts"]
        features, target = record["features"], record["target"]
    except KeyError as exc:
        raise BadRecord("missing_field", f"missing {exc.args[0]}") from None
    if not isinstance(symbol, str) or not isinstance(features, dict):
        raise BadRecord("wrong_type", "symbol must be a string and features an object")
    for v in (ts, label_ts, target):
        if type(v) is not float and type(v) is not int:
            raise BadRecord("wrong_type", "ts, label_ts and target must be numbers")
        if not math.isfinite(v):
            raise BadRecord("not_finite", "ts, label_ts and target must be finite")
    if label_ts <= ts:
        raise BadRecord("leak", f"label_ts {label_ts} is not after ts {ts}")
    # missing and non-finite features are left out, as River models expect (v - v is 0.0
    # only for finite numbers)
    x = {k: float(v) for k, v in features.items() if type(v) in _NUMBER and v - v == 0}
    return Example(symbol, float(ts), float(label_ts), x, float(target))


class RollingMean:
    """Mean of the last `window` values."""

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0

    def add(self, value: float) -> None:
        if len(self.values) == self.values.maxlen:
            self.total -= self.values[0]
        self.values.append(value)
        self.total += value

    @property
    def mean(self) -> float:
        return self.total / len(self.values) if self.values else math.nan


class Learner:
    """A model with its learning history; pickled whole into every checkpoint."""

    def __init__(self, model: Any, window: int = 500, drift_delta: float = 0.002) -> None:
        self.model = model
        self.window = window
        self.drift_delta = drift_delta
        self.drift = drift.ADWIN(delta=drift_delta)
        self.drifts = 0
        self.drift_detected = False
        self.challenger: Any | None = None
        self._challenger_rolling = RollingMean(window)
        self._own_rolling = RollingMean(window)
        self.learned = 0
        self.skipped = 0
        self.watermark = -math.inf
        self.last_ts: dict[str, float] = {}
        self._abs_error = 0.0
        self._abs_baseline = 0.0
        self._rolling = RollingMean(window)
        self._rolling_baseline = RollingMean(window)
        self._per_symbol: dict[str, list[float]] = {}

    def start_challenger(self, model: Any) -> None:
        """Train `model` beside the current one from now on, scored on the same examples."""
        self.challenger = model
        self._challenger_rolling = RollingMean(self.window)
        self._own_rolling = RollingMean(self.window)

    def settle_challenger(self) -> bool:
        """Once the challenger has a full window, keep whichever model erred less on it.

        Returns True when the challenger took over.
        """
        if self.challenger is None or len(self._challenger_rolling.values) < self.window:
            return False
        won = self._challenger_rolling.mean < self._own_rolling.mean
        if won:
            self.reset_model(self.challenger)
        self.challenger = None
        return won

    def reset_model(self, model: Any) -> None:
        """Start a fresh model after a drift; history and metrics carry on."""
        self.model = model
        self.drift = drift.ADWIN(delta=self.drift_delta)

    def predict_one(self, x: dict[str, float]) -> float:
        return float(self.model.predict_one(x))

    def step(self, ex: Example) -> bool:
        """Predict, score, learn; False (and nothing learned) for an example seen before."""
        if ex.ts <= self.last_ts.get(ex.symbol, -math.inf):
            self.skipped += 1
            return False
        error = abs(ex.target - self.predict_one(ex.features))
        if not math.isfinite(error):
            error = math.inf
        self._abs_error += error
        self._abs_baseline += abs(ex.target)
        self._rolling.add(error)
        self._rolling_baseline.add(abs(ex.target))
        per = self._per_symbol.setdefault(ex.symbol, [0.0, 0])
        per[0] += error
        per[1] += 1
        if self.challenger is not None:
            theirs = abs(ex.target - float(self.challenger.predict_one(ex.features)))
            self._challenger_rolling.add(theirs if math.isfinite(theirs) else math.inf)
            self._own_rolling.add(error)
            self.challenger.learn_one(ex.features, ex.target)
        if math.isfinite(error):
            self.drift.update(error)
        self.drift_detected = self.drift.drift_detected
        self.drifts += self.drift_detected
        self.model.learn_one(ex.features, ex.target)
        self.last_ts[ex.symbol] = ex.ts
        self.learned += 1
        self.watermark = max(self.watermark, ex.label_ts)
        return True

    def metrics(self) -> dict[str, float]:
        n = max(self.learned, 1)
        out = {
            "mae": self._abs_error / n,
            "baseline_mae": self._abs_baseline / n,
            "rolling_mae": self._rolling.mean,
            "baseline_rolling_mae": self._rolling_baseline.mean,
            "learned": float(self.learned),
            "drifts": float(self.drifts),
        }
        for symbol, (total, count) in self._per_symbol.items():
            out[f"mae.{symbol.replace('/', '_')}"] = total / count
        return out
