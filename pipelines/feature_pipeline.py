"""The live feature pipeline: `trades` in; Feast, `features` and `examples` out.

Bad trades (not JSON, missing fields, wrong types, NaN/inf, non-positive price or size,
duplicate ids, too late for their window) go to `trades.dlq` with their reason and are counted;
the loop goes on. Offsets are committed only once everything a trade led to is durable, and
never past the first trade of a candle that is still open, so a restart rebuilds open candles
exactly; closed history is restored from the offline store.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from rtml import feature_store as fs
from rtml.kafka import (
    Topics,
    TopicWatch,
    dead_letter,
    ensure_topics,
    make_consumer,
    make_producer,
)
from rtml.pipelines.features import WARMUP
from rtml.pipelines.processor import FeatureProcessor, Outputs
from rtml.pipelines.sink import FeatureSink
from rtml.pipelines.trades import BadRecord, parse_trade
from rtml.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    trades: int = 0
    candles: int = 0
    features: int = 0
    examples: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    topics_recreated: int = 0  # times the broker had forgotten topics
    already_stored: int = 0  # rows a backfill found in the offline store and did not write

    def line(self) -> str:
        bad = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        stored = f", already stored {self.already_stored}" if self.already_stored else ""
        return (
            f"trades {self.trades}, candles {self.candles}, features {self.features}, "
            f"examples {self.examples}{stored}, rejected: {bad}"
        )


def restore(processor: FeatureProcessor, settings: Settings) -> int:
    """Give each symbol its newest stored features back; returns how many symbols resumed."""
    frame = fs.read_parquet_dir(settings.offline_dir / fs.FEATURES_DATASET)
    if frame.empty:
        return 0
    frame = frame.sort_values("event_timestamp").groupby("symbol", sort=False).tail(WARMUP)
    for symbol, rows in frame.groupby("symbol", sort=False):
        values: list[dict[str, float]] = rows.drop(  # type: ignore[assignment]
            columns=["symbol", "event_timestamp", "created"]
        ).to_dict("records")
        stamps = [ts.timestamp() for ts in rows["event_timestamp"]]
        processor.restore(str(symbol), list(zip(stamps, values, strict=True)))
    return int(frame["symbol"].nunique())


class FeaturePipeline:
    """One consumer-group member; run several to share the `trades` partitions."""

    def __init__(
        self,
        settings: Settings,
        group_id: str = "rtml-features",
        commit_interval_s: float = 5.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.commit_interval_s = commit_interval_s
        self.stop = stop or threading.Event()
        self.topics = Topics.of(settings)
        self.stats = PipelineStats()
        self.processor = FeatureProcessor(
            settings.candle_seconds,
            settings.allowed_lateness_s,
            settings.horizon,
            settings.max_future_s,
            settings.gap_policy,
        )
        self.symbols = frozenset(settings.symbols)
        self._last: dict[int, int] = {}

    def run(self, max_seconds: float | None = None) -> PipelineStats:
        settings = self.settings
        ensure_topics(settings, self.topics.with_dlqs())
        resumed = restore(self.processor, settings)
        log.info("feature pipeline starting; %d symbols resumed from the offline store", resumed)
        consumer = make_consumer(settings, self.group_id)
        producer = make_producer(settings)
        sink = FeatureSink(settings, fs.open_store(settings), producer, self.stop)
        consumer.subscribe([self.topics.trades])
        watch = TopicWatch(settings, self.topics.with_dlqs())
        watch.remember()
        deadline = time.monotonic() + max_seconds if max_seconds else None
        last_commit = time.monotonic()
        try:
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                out = Outputs()
                for msg in consumer.consume(num_messages=1000, timeout=0.2):
                    self._handle(msg, out, producer)
                if out:
                    sink.write(out)
                    self._count(out)
                if time.monotonic() - last_commit >= self.commit_interval_s:
                    # a symbol gone quiet must not hold the commit behind its open window
                    idle = self.processor.close_idle(2.0 * settings.candle_seconds)
                    if idle:
                        sink.write(idle)
                        self._count(idle)
                    # checked right before committing: offsets into a topic the broker has
                    # forgotten must never reach the new one
                    if forgotten := watch.changed(now=True):
                        self._recreate(forgotten, watch, consumer, sink)
                    else:
                        self._commit(consumer, producer, sink)
                    last_commit = time.monotonic()
            if watch.changed(now=True):
                sink.flush_offline()  # durable; the offsets belong to a forgotten topic
            else:
                self._commit(consumer, producer, sink)
        finally:
            consumer.close()
            producer.flush(10)
        log.info("feature pipeline stopped: %s", self.stats.line())
        return self.stats

    def _recreate(
        self, forgotten: list[str], watch: TopicWatch, consumer: Consumer, sink: FeatureSink
    ) -> None:
        """The broker lost topics (an embedded broker keeps nothing across a restart).

        What was buffered for the offline store is written, so a trainer can catch up on the
        examples the broker lost. The topics are created again; if `trades` was among them,
        the offsets held so far mean nothing any more and its new records are read from their
        start.
        """
        log.warning("the broker no longer has %s as they were: creating them again", forgotten)
        sink.flush_offline()
        ensure_topics(self.settings, self.topics.with_dlqs())
        watch.remember()
        self.stats.topics_recreated += 1
        if self.topics.trades in forgotten:
            self._last.clear()
            self.processor.builder.forget_positions()
            for tp in consumer.assignment():
                with contextlib.suppress(KafkaException):
                    consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))

    def _handle(self, msg: Message, out: Outputs, producer: Producer) -> None:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            return
        partition, offset = msg.partition() or 0, msg.offset() or 0
        self._last[partition] = offset
        self.stats.trades += 1
        try:
            trade = parse_trade(msg.value() or b"")
            if trade.symbol not in self.symbols:
                # a window opened for it would never close and pin the commit behind it
                raise BadRecord(
                    "unknown_symbol",
                    f"{trade.symbol!r:.60} is not in RTML_SYMBOLS; add it there to build it",
                )
            key = msg.key()
            if key is not None and key != trade.symbol.encode():
                # each symbol's watermark assumes its trades share one partition; a trade on
                # another symbol's partition could overtake its own and make them late
                raise BadRecord(
                    "misrouted",
                    f"key {key.decode(errors='replace')!r} is not the trade's symbol "
                    f"{trade.symbol!r}: produce trades keyed by their symbol",
                )
            out.extend(self.processor.on_trade(trade, (partition, offset)))
        except BadRecord as exc:
            origin = f"{self.topics.trades}[{partition}]@{offset}"
            self.stats.rejected[exc.kind] += 1
            log.debug("rejected %s: %s", origin, exc)
            dead_letter(
                producer, self.topics.trades, str(exc), msg.value(), key=msg.key(), origin=origin
            )

    def _count(self, out: Outputs) -> None:
        self.stats.candles += len(out.candles)
        self.stats.features += len(out.features)
        self.stats.examples += len(out.examples)

    def _commit(self, consumer: Consumer, producer: Producer, sink: FeatureSink) -> None:
        if not self._last:
            return
        sink.flush_offline()
        producer.flush(30)
        open_positions = self.processor.builder.open_positions()
        offsets = [
            TopicPartition(self.topics.trades, p, min(open_positions.get(p, last + 1), last + 1))
            for p, last in self._last.items()
        ]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. a restarted broker that forgot the group
            log.warning("could not commit %s (%s); the next commit carries them", offsets, exc)
            return
        log.info("committed %s; %s", {tp.partition: tp.offset for tp in offsets}, self.stats.line())
