"""The streaming predictor: `features` in, `predictions` out, in a consumer group.

Replicas in one group share the `features` partitions, so each record is predicted once. Each
prediction carries the version that made it and the newest label time that version had learned.
A malformed record goes to `features.dlq`; offsets are committed after predictions are flushed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable

from confluent_kafka import KafkaError, Message, Producer

from rtml.kafka import (
    Topics,
    commit_stored,
    dead_letter,
    encode,
    ensure_topics,
    make_consumer,
    make_producer,
)
from rtml.pipelines.features import FEATURE_NAMES
from rtml.pipelines.trades import BadRecord, EventTimes, decode_object
from rtml.serving.model_holder import ModelHolder, ModelRouter
from rtml.settings import Settings

log = logging.getLogger(__name__)


def parse_features(raw: bytes, names: Iterable[str]) -> tuple[str, float, dict[str, float]]:
    """A `features` record's symbol, time and the finite values of `names` it carries."""
    record = decode_object(raw)
    try:
        symbol, ts, values = record["symbol"], float(record["ts"]), record["features"]
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise BadRecord("malformed", f"features record: {exc!r}") from None
    if not isinstance(symbol, str) or not isinstance(values, dict):
        raise BadRecord("wrong_type", "symbol must be a string and features an object")
    if not math.isfinite(ts):
        raise BadRecord("not_finite", f"ts must be finite, got {ts!r}")
    x = {
        n: float(v)
        for n in names
        # bool is an int to Python, but not a feature value
        if isinstance(v := values.get(n), float | int) and not isinstance(v, bool) and v - v == 0
    }
    return symbol, ts, x


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
        self.predicted = 0
        self.rejected = 0
        self.rejected_by: Counter[str] = Counter()  # by the BadRecord's kind
        self.assignment: set[int] = set()  # the `features` partitions this replica owns
        self.symbols = frozenset(settings.symbols).union(*settings.shards.values())
        self.event_times = EventTimes(settings.max_future_s)

    def _handle(self, msg: Message, producer: Producer) -> None:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            return
        try:
            symbol, ts, x = parse_features(msg.value() or b"", FEATURE_NAMES)
            if symbol not in self.symbols:
                raise BadRecord(
                    "unknown_symbol",
                    f"{symbol!r:.60} is not in RTML_SYMBOLS (or RTML_SHARDS); add it to serve it",
                )
            self.event_times.admit(symbol, ts)
            model = self.holder.for_symbol(symbol)
            if model is None:
                raise BadRecord("unrouted", f"no model serves {symbol!r} (see RTML_SHARDS)")
        except BadRecord as exc:
            self.rejected += 1
            self.rejected_by[exc.kind] += 1
            origin = f"{self.topics.features}[{msg.partition()}]@{msg.offset()}"
            dead_letter(
                producer,
                self.topics.features,
                str(exc),
                msg.value(),
                key=msg.key(),
                origin=origin,
            )
            return
        prediction = float(model.learner.predict_one(x))
        record = {
            "symbol": symbol,
            "ts": ts,
            "prediction": prediction if math.isfinite(prediction) else None,
            "model": model.model,
            "model_version": model.version,
            "trained_through": model.trained_through,
        }
        producer.produce(self.topics.predictions, key=symbol.encode(), value=encode(record))
        self.predicted += 1

    def run(self, max_seconds: float | None = None) -> int:
        ensure_topics(self.settings, self.topics.with_dlqs())
        consumer = make_consumer(self.settings, self.group_id)
        producer = make_producer(self.settings)
        consumer.subscribe(
            [self.topics.features],
            on_assign=lambda _, parts: self.assignment.update(p.partition for p in parts),
            on_revoke=lambda _, parts: self.assignment.difference_update(
                p.partition for p in parts
            ),
        )
        deadline = time.monotonic() + max_seconds if max_seconds else None
        try:
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if self.holder.missing():  # nothing to serve yet: leave records unread
                    self.stop.wait(0.2)
                    continue
                batch = consumer.consume(num_messages=1000, timeout=0.2)
                for msg in batch:
                    self._handle(msg, producer)
                    if msg.error() is None:
                        consumer.store_offsets(message=msg)
                if batch:
                    producer.flush(30)
                    commit_stored(consumer)
        finally:
            consumer.close()
            producer.flush(10)
        return self.predicted
