"""The streaming predictor: `features` in, `predictions` out, in a consumer group.

Replicas in one group share the `features` partitions, so each record is predicted once. Each
prediction carries the version that made it and the newest label time that version had learned.
The loop is the shared runner's (`rtml.runner`): a record it cannot use goes to `features.dlq`
with its class and is counted; offsets are committed after the predictions are delivered.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Iterable

import orjson
from confluent_kafka import Message, Producer

from rtml.consumers import GroupSource, Position
from rtml.event_time import EventTimes
from rtml.kafka import Topics, encode, ensure_topics, make_consumer, make_producer, send
from rtml.metrics import Counters, serve_metrics
from rtml.pipelines.features.indicators import FEATURE_BOUNDS, FEATURE_NAMES, out_of_bounds
from rtml.pipelines.training.models import LinearScorer
from rtml.records import BadRecord, FeatureRow, Prediction, features_reader
from rtml.runner import Hooks, Pace, Runner
from rtml.settings import Settings

from .model_holder import ModelHolder, ModelRouter, Served

log = logging.getLogger(__name__)


class StreamingPredictor:
    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder | ModelRouter,
        group_id: str = "rtml-predictor",
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.group_id = group_id
        self.topics = Topics.of(settings)
        self.stop = threading.Event()
        self.counters = Counters("predict-stream")
        self.metrics_port: int | None = None  # with RTML_METRICS_PORT
        self.assignment: set[int] = set()  # the `features` partitions this replica owns
        self.symbols = frozenset(settings.symbols).union(*settings.shards.values())
        self.event_times = EventTimes(
            settings.max_future_bound_s, max_silence_s=settings.max_silence_bound_s
        )
        self._producer: Producer | None = None
        self._fused: dict[int, Fused] = {}  # each model served, as `_usual` reads it
        self._features = features_reader(FEATURE_NAMES, FEATURE_BOUNDS)

    @property
    def predicted(self) -> int:
        return self.counters.done["predicted"]

    @property
    def rejected(self) -> int:
        return self.counters.total_rejected()

    @property
    def rejected_by(self) -> Counter[str]:
        return self.counters.rejected_by()

    def step(self, msg: Message) -> None:
        """Predict one `features` record onto `predictions`."""
        raw = msg.value() or b""
        row = self._features.read(raw)
        if not self._usual(row.symbol, row.ts, row.values.values()):
            self._predict_row(row)  # another kind of model, or symbol

    def _usual(self, symbol: str, ts: float, values: Iterable[float]) -> bool:
        """Predict a record of a configured symbol served by a linear model in one pass over
        its features; False, with nothing done, for any other, which `_predict_row` then
        predicts. The prediction and what is produced are the same either way
        (tests/test_stream_unit.py)."""
        if symbol not in self.symbols:
            return False
        model = self.holder.for_symbol(symbol)
        if model is None:
            return False
        fused = self._fused.get(id(model))
        if fused is None or fused.served is not model:
            if len(self._fused) >= FUSED_KEPT:
                self._fused.clear()  # versions long replaced (each holds its model alive)
            fused = self._fused[id(model)] = Fused.of(model)
        if not fused.terms:
            return False  # not a linear model
        total = fused.intercept
        for x, (weight, mean) in zip(values, fused.terms, strict=True):
            if weight:
                total += weight * (x - mean)
        self.event_times.admit(symbol, ts)
        value, key = fused.encode(symbol, ts, total)
        try:
            self._producer.produce(self.topics.predictions, value, key)  # type: ignore[union-attr]
        except BufferError:  # the local queue is full: wait for the broker, as `send` does
            send(self._producer, self.topics.predictions, value, key)
        return True

    def _predict_row(self, row: FeatureRow) -> None:
        if row.symbol not in self.symbols:
            raise BadRecord(
                "unknown_symbol",
                f"{row.symbol!r:.60} is not in RTML_SYMBOLS (or RTML_SHARDS); add it to serve it",
            )
        self.event_times.admit(row.symbol, row.ts)
        if (beyond := out_of_bounds(row.values)) is not None:
            raise BadRecord("out_of_range", f"{row.symbol}@{row.ts}: {beyond}")
        model = self.holder.for_symbol(row.symbol)
        if model is None:
            raise BadRecord("unrouted", f"no model serves {row.symbol!r} (see RTML_SHARDS)")
        prediction = Prediction(
            row.symbol,
            row.ts,
            float(model.scorer.predict_one(row.values)),
            int(model.version),
            model.trained_through,
            model.model,
        )
        assert self._producer is not None
        send(
            self._producer,
            self.topics.predictions,
            encode(prediction.to_json()),
            row.symbol.encode(),
        )

    def _assigned(self, partitions: list[Position]) -> None:
        self.assignment.update(p for _, p in partitions)

    def _revoked(self, partitions: list[Position]) -> None:
        self.assignment.difference_update(p for _, p in partitions)

    def run(self, max_seconds: float | None = None) -> int:
        ensure_topics(self.settings, self.topics.with_dlqs())
        self._producer = make_producer(self.settings)
        metrics = serve_metrics(self.settings, self.counters)
        self.metrics_port = metrics.port
        runner = Runner(
            GroupSource(make_consumer(self.settings, self.group_id), [self.topics.features]),
            self._producer,
            self.step,
            self.counters,
            stop=self.stop,
            outcome="predicted",
            pace=Pace(max_block_s=self.settings.kafka_max_poll_interval_ms / 3000),
            hooks=Hooks(
                ready=lambda: not self.holder.missing(),
                on_assign=self._assigned,
                on_revoke=self._revoked,
            ),
        )
        try:
            runner.run(max_seconds)
        finally:
            metrics.close()
        log.info("streaming predictor stopped: %s", self.counters.line())
        return self.predicted


FUSED_KEPT = 64
"""The most served models (shards, versions) the streaming predictor keeps read for its one
pass; past it the reading starts over."""


class Fused:
    """A served model as the streaming predictor's one pass reads it. For a linear model, for
    each feature in `FEATURE_NAMES`' order, its folded weight and mean (zero weight for a
    feature the model does not use): the sum is `LinearScorer.predict_one`'s, term by term.
    For any other model, or a version that is not a number, no terms: every record is read
    field by field. `encode` writes `Prediction.to_json` of this version as `encode` would,
    from parts made once per symbol and version."""

    __slots__ = ("_heads", "_tail", "intercept", "served", "terms")

    def __init__(
        self, served: Served, intercept: float, terms: tuple[tuple[float, float], ...]
    ) -> None:
        self.served = served
        self.intercept = intercept
        self.terms = terms
        version = str(int(served.version)) if terms else served.version
        self._tail = b"".join(
            (
                b',"model":',
                orjson.dumps(served.model),
                b',"model_version":',
                orjson.dumps(version),
                b',"trained_through":',
                orjson.dumps(served.trained_through),
                b"}",
            )
        )
        self._heads: dict[str, tuple[bytes, bytes]] = {}

    @classmethod
    def of(cls, model: Served) -> Fused:
        scorer = model.scorer
        if type(scorer) is not LinearScorer or not (
            model.version.isascii() and model.version.isdigit()
        ):
            return cls(model, 0.0, ())
        terms = tuple(scorer.terms.get(name, (0.0, 0.0)) for name in FEATURE_NAMES)
        return cls(model, scorer.intercept, terms)

    def encode(self, symbol: str, ts: float, prediction: float) -> tuple[bytes, bytes]:
        """The `predictions` record's value, and its key."""
        head = self._heads.get(symbol)
        if head is None:  # one per configured symbol
            head = self._heads[symbol] = (
                b'{"symbol":' + orjson.dumps(symbol) + b',"ts":',
                symbol.encode(),
            )
        value = b"".join(
            (
                head[0],
                orjson.dumps(ts),
                b',"prediction":',
                orjson.dumps(prediction if math.isfinite(prediction) else None),
                self._tail,
            )
        )
        return value, head[1]
