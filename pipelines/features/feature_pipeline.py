"""The live feature pipeline: `trades` in; Feast, `features` and `examples` out.

It runs on the shared consumer loop (`rtml.runner.Runner`). Bad trades (not JSON, missing
fields, wrong types, NaN/inf, a price that is not positive, duplicate ids, too late for their
window) go to `trades.dlq` with their reason and are counted; the loop goes on. Offsets are
committed only once everything a trade led to is durable, and never past the first trade of a
candle that is still open, so a replay rebuilds open candles exactly; closed history is
resumed from the offline store's `candles`, and what the pipeline sent since its last commit
is not sent again (`recovery.py`). A member that stalled past its session and
wakes up finds itself fenced before it writes (`membership.py`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client.core import Metric

from rtml import feature_store as fs
from rtml.consumers import Position
from rtml.kafka import (
    Topics,
    TopicWatch,
    dlq,
    ensure_topics,
    make_consumer,
    make_producer,
)
from rtml.metrics import Counters, serve_metrics
from rtml.records import TRADES, BadRecord, Trade
from rtml.runner import Hooks, Pace, Runner
from rtml.settings import Settings

from .membership import Membership, RecordingSource
from .parking import Parking
from .processor import FeatureProcessor, Outputs
from .recovery import Ledger, Replay
from .resume import History, newest_stored, read_starts
from .sink import FeatureSink, PipelineStats

log = logging.getLogger(__name__)

ONLINE_EVERY_S = 0.2
"""Online writes at most this often under load (each carries every symbol's newest row): a
Feast write costs milliseconds whatever its size. At live rates a batch ends every poll."""


class FeaturePipeline:
    """One consumer-group member; run several to share the `trades` partitions.

    Each assignment reads back what was sent since the last commit (`recovery.py`) and the
    offline store's newest rows; a symbol resumes from them when its first trade arrives. A
    revoke first commits what was processed, then drops the symbols of the partitions that
    left, so two replicas never hold one symbol's windows at once.
    """

    def __init__(
        self,
        settings: Settings,
        group_id: str = "rtml-features",
        commit_interval_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.commit_interval_s = commit_interval_s or settings.commit_interval_s
        self.stop = stop or threading.Event()
        self.topics = Topics.of(settings)
        self.stats = PipelineStats()
        self.processor = FeatureProcessor.of(settings)
        self.symbols = frozenset(settings.symbols)
        self._replay = Replay()  # what a replay finds sent already
        self._ledger = Ledger()  # where this member's own records stand on its outputs
        self._membership = Membership(settings, group_id, self.topics.trades)
        self._history = History()
        self._parking = Parking()  # the symbols held, and those put aside
        self._consumer: Consumer | None = None
        self._sink: FeatureSink | None = None
        self._runner: Runner | None = None
        self._watch: TopicWatch | None = None
        self._last_idle_check = 0.0
        self._replays = 0  # late trades a replay found counted in a candle already
        self.counters = Counters("features")
        self.assignment: set[int] = set()
        self.metrics_port: int | None = None  # where `collect` is served, with RTML_METRICS_PORT
        self.assignments = 0  # partitions given to this member: 1 means no rebalance since start
        self._out = Outputs()  # what the current batch led to, not yet sent
        self._dead_letters = 0  # sent in the current batch
        # a flush is bounded well inside the poll interval: a broker away must not cost the
        # group membership
        self._flush_s = max(1.0, settings.kafka_max_poll_interval_ms / 2000)

    def run(self, max_seconds: float | None = None) -> PipelineStats:
        """Consume `trades` on the shared runner (`rtml.runner.Runner`) until stopped: each
        trade is a step; the runner's hooks write what a batch led to, commit behind open
        windows, pass over what a replay finds already dead-lettered, and keep the group
        membership while Redis is away."""
        settings = self.settings
        ensure_topics(settings, self.topics.with_dlqs())
        metrics = serve_metrics(settings, self)
        self.metrics_port = metrics.port
        consumer = make_consumer(settings, self.group_id)
        sink = FeatureSink(
            settings,
            fs.open_store(settings),
            self._producer(),
            self.stop,
            online_every_s=ONLINE_EVERY_S,
        )
        watch = self._watch = TopicWatch(settings, self.topics.with_dlqs())
        watch.remember()
        self._consumer, self._sink = consumer, sink
        runner = self._runner = Runner(
            RecordingSource(consumer, [self.topics.trades], self._committed_now),
            sink.kafka,
            self.step,
            self.counters,
            stop=self.stop,
            pace=Pace(
                commit_interval_s=self.commit_interval_s,
                flush_s=self._flush_s,
                max_block_s=self._flush_s,
            ),
            hooks=Hooks(
                tick=self._tick,
                on_assign=self._on_assign,
                on_revoke=self._drop,
                on_reject=self._rejected,
                before_commit=self._before_commit,
                committable=self._committable,
                replayed=self._replayed,
            ),
        )
        sink.idle = runner.hold  # a write waiting on Redis keeps the group membership
        self._last_idle_check = time.monotonic()
        try:
            runner.run(max_seconds)
        finally:
            self._sync_stats()
            self._runner = None  # the revoke of closing only lets go
            metrics.close()
        self.stats.already_emitted = sink.already_emitted
        log.info("feature pipeline stopped: %s", self.stats.line())
        return self.stats

    def collect(self) -> Iterator[Metric]:
        """Prometheus metrics at scrape time, from the pipeline's figures."""
        return self.stats.counters(self.topics.trades).collect()

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def _producer(self) -> Producer:
        # idempotent: a retried produce is neither duplicated nor reordered; each delivery
        # tells the ledger where this member's records stand (pipelines/features/recovery.py)
        return make_producer(
            self.settings, **{"enable.idempotence": True, "on_delivery": self._delivered}
        )

    def _delivered(self, error: KafkaError | None, msg: Message) -> None:
        if error is None:
            self._ledger.delivered(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)

    def _write(self) -> None:
        """Send what the trades read so far led to."""
        sink, runner = self._sink, self._runner
        assert sink is not None
        if (self._out or self._dead_letters) and not self._still_member():
            return
        self._dead_letters = 0  # delivered with the rest before the next commit
        if self._out:
            sink.write(self._out)
            self._count(self._out)
            self._out = Outputs()
        sink.flush_online(due_only=True)
        if runner is not None:
            runner.release()  # after an outage: read on

    def _tick(self) -> None:
        """Once per loop turn: write what the last batch led to; every commit interval, close
        the windows of symbols gone quiet (they must not hold the commit behind them)."""
        self._sync_stats()
        self._write()
        if self._runner is not None:  # where the outputs stand before the next batch
            reading = {p: o for (_, p), o in self._runner.processed.items()}
            self._ledger.snapshot(reading)
        if time.monotonic() - self._last_idle_check >= self.commit_interval_s:
            self._last_idle_check = time.monotonic()
            self._out.extend(self.processor.close_idle(2.0 * self.settings.candle_seconds))
            self._write()
            if self._runner is not None and not self._runner.processed:
                self._before_commit()  # nothing to commit: still notice a broker restart

    def _sync_stats(self) -> None:
        self.stats.trades = self.counters.read[self.topics.trades]
        self.stats.replayed = self._replays + self.counters.done["replayed"]

    def _on_assign(self, partitions: list[Position]) -> None:
        """Read back what this member's group sent since the assigned partitions' last commit
        and the offline store's newest rows, once per assignment; symbols resume from them at
        their first trade. What an earlier assignment buffered for the offline store is
        written now, past what the store holds, and resumed from (partitions back after a
        broker restart: resuming without it would put flat candles where real ones were);
        the rows of partitions now elsewhere are dropped (their new owner writes them)."""
        self.assignment = {p for _, p in partitions}
        if not partitions:
            return
        self.assignments += 1
        sink, consumer, watch = self._sink, self._consumer, self._watch
        trades_id = self._trades_id_now()
        self._unpark(trades_id)
        membership = self._membership
        committed = membership.read_committed(consumer, partitions)
        topics = [self.topics.features, self.topics.examples, dlq(self.topics.trades)]
        records = membership.records(committed, trades_id)
        starts = None if records is None else read_starts(records, watch.ids if watch else {})
        self._replay, ends = Replay.read(self.settings, topics, starts)
        self._ledger.read_to(ends)
        newest = None if records is None else newest_stored(records)
        history = self._history = History.read(
            self.settings, self.settings.horizon, trades_id, newest
        )
        membership.newest = {**(newest or {}), **history.stored}
        self._replay.through = history.counted.through
        membership.confirmed()
        if sink is None:
            return
        self._parking.keep_held(self.assignment)
        sink.stored.update(history.stored)
        buffered_id = sink.trades_id
        for candle, source in sink.flush_offline():
            history.extend(candle, self.settings.horizon)
            if source is not None and buffered_id == trades_id:
                where = (candle.symbol, source[0])
                through = self._replay.through
                through[where] = max(source[1], through.get(where, -1))
        sink.replay, sink.trades_id = self._replay, trades_id

    def _trades_id_now(self) -> str | None:
        """The `trades` incarnation as the broker tells it now (as last seen, if it cannot)."""
        watch = self._watch
        if watch is None:
            return None
        try:
            return watch.look().get(self.topics.trades)
        except (KafkaException, TimeoutError):
            return watch.ids.get(self.topics.trades)

    def _unpark(self, trades_id: str | None) -> None:
        rows = self._parking.unpark(trades_id, self.assignment, self.processor)
        if self._sink is not None:
            self._sink.give(rows)

    def _committed_now(self, offsets: dict[Position, int]) -> None:
        watch, sink = self._watch, self._sink
        self._membership.write_records(
            offsets,
            self.assignment,
            watch.ids if watch is not None else {},
            self._ledger.starts,
            sink.stored if sink is not None else {},
        )

    def _still_member(self) -> bool:
        if self._membership.still_member(self._consumer, self.assignment):
            return True
        self._fenced()
        return False

    def _fenced(self) -> None:
        runner, sink = self._runner, self._sink
        self._out = Outputs()
        self._dead_letters = 0
        if sink is not None:
            sink.keep_only(set())
        if runner is not None:
            runner.drop(sorted(runner.assignment))

    def _drop(self, positions: list[Position]) -> None:
        """Partitions left (revoked, after the runner committed what they led to, or lost):
        drop the symbols built from them, so two replicas never hold one symbol's windows."""
        partitions = {p for _, p in positions}
        self.assignment -= partitions
        gone = self._parking.symbols_of(partitions)
        # their new owner writes what the sink buffers of them, unless the broker forgot
        unstored = self._sink.take(gone) if self._sink is not None else Outputs()
        self._parking.leave(gone, self.processor, unstored)
        self._replay.forget(gone)
        self._membership.forget(partitions)

    def _resume(self, symbol: str, partition: int) -> None:
        """`symbol`'s first trade since this member got its partition: start where the offline
        store's newest candles left it."""
        self._history.resume(self.processor, symbol)
        self._parking.resume(symbol, partition)

    def _recreate(self, forgotten: list[str]) -> None:
        """The broker lost topics (an embedded broker keeps nothing across a restart).

        What was buffered for the offline store is written, so a trainer can catch up on the
        examples the broker lost. The topics are created again; if `trades` was among them,
        the offsets held so far mean nothing any more and its new records are read from their
        start.
        """
        sink, runner, consumer, watch = self._sink, self._runner, self._consumer, self._watch
        assert sink is not None and runner is not None and consumer is not None
        assert watch is not None
        log.warning("the broker no longer has %s as they were: creating them again", forgotten)
        sink.flush_offline()
        # what was read back refers to the topics as they were; the broker has forgotten this
        # producer too (an idempotent producer's sequence numbers would not be accepted)
        self._replay = sink.replay = Replay()
        self._ledger = Ledger()
        sink.kafka.flush(1)
        sink.producer = self._producer()
        runner.sink = sink.kafka
        ensure_topics(self.settings, self.topics.with_dlqs())
        sink.trades_id = watch.remember().get(self.topics.trades)
        self.stats.topics_recreated += 1
        if self.topics.trades in forgotten:
            runner.processed.clear()
            self.processor.builder.forget_positions()
            for tp in consumer.assignment():
                with contextlib.suppress(KafkaException):
                    consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))

    def step(self, msg: Message) -> None:
        """One trade: into its symbol's candles, or BadRecord saying why not."""
        partition, offset = msg.partition() or 0, msg.offset() or 0
        trade: Trade | None = None
        try:
            raw = msg.value() or b""
            trade = TRADES.read(raw)
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
            resumed_on = self._parking.resumed.get(trade.symbol)
            if resumed_on is not None and resumed_on != partition:
                # a keyless trade: on a partition of its own it would make two windows of
                # one symbol, in this replica or in two
                raise BadRecord(
                    "misrouted",
                    f"{trade.symbol!r} arrived on partition {partition}, its trades on "
                    f"{resumed_on}: produce trades keyed by their symbol",
                )
            if resumed_on is None:
                self._resume(trade.symbol, partition)
            self.processor.on_trade(trade, (partition, offset), self._out)
        except BadRecord as exc:
            if (
                exc.kind == "late"
                and trade is not None
                and self._replay.counted(trade.symbol, partition, offset)
            ):
                # read again after a restart or a rebalance: it is in a candle already closed
                self._replays += 1
                return
            raise

    def _replayed(self, topic: str, key: bytes | None, value: bytes) -> bool:
        """A reject whose dead letter, byte for byte, a replay finds on the DLQ already."""
        return self._replay.already_sent(topic, key, value)

    def _rejected(self, topic: str, kind: str) -> None:
        del topic
        self.stats.rejected[kind] += 1
        self._dead_letters += 1

    def _count(self, out: Outputs) -> None:
        self.stats.candles += len(out.candles)
        self.stats.features += len(out.features)
        self.stats.examples += len(out.examples)

    def _before_commit(self) -> bool:
        """Everything processed made durable, in order: the topics, then the online and offline
        stores (a crash between any two leaves the offline store behind the topics, never
        ahead, and a replay rebuilds it). False, and no commit, when the broker has forgotten
        the topics: offsets into one it forgot must never reach the new one."""
        self._write()
        sink, watch = self._sink, self._watch
        assert sink is not None and watch is not None
        if forgotten := watch.changed(now=True):
            if self.stop.is_set():
                sink.flush_offline()  # durable; the offsets belong to a forgotten topic
            else:
                self._recreate(forgotten)
            return False
        if (unsent := sink.kafka.flush(self._flush_s)) > 0:
            log.warning("%d records not yet delivered; offsets not committed", unsent)
            return False
        if not self._still_member():
            return False
        sink.flush_online()
        sink.flush_offline()
        return True

    def _committable(self, offsets: dict[Position, int]) -> dict[Position, int]:
        """Never past the first trade of a window still open: a replay rebuilds it."""
        open_positions = self.processor.builder.open_positions()
        out = {(t, p): min(open_positions.get(p, o), o) for (t, p), o in offsets.items()}
        log.info("committing %s; %s", {p: o for (_, p), o in out.items()}, self.stats.line())
        return out
