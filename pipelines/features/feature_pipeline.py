"""The live feature pipeline: `trades` in; Feast, `features` and `examples` out.

It runs on the shared consumer loop (`rtml.runner.Runner`). Bad trades (not JSON, missing
fields, wrong types, NaN/inf, a price that is not positive, duplicate ids, too late for their
window) go to `trades.dlq` with their reason and are counted; the loop goes on. Offsets are
committed only once everything a trade led to is durable, and never past the first trade of a
candle that is still open, so a replay rebuilds open candles exactly; closed history is
resumed from the offline store's `candles`, and what the pipeline sent since its last commit
is not sent again (`recovery.py`). A member that stalled past its session and
wakes up finds itself fenced before it writes (`_still_member`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
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
from prometheus_client.core import Metric

from rtml import feature_store as fs
from rtml.kafka import (
    Topics,
    TopicWatch,
    dlq,
    ensure_topics,
    make_consumer,
    make_producer,
)
from rtml.records import TRADES, BadRecord, Trade
from rtml.runner import Counters, GroupSource, Position, Runner, serve_metrics
from rtml.settings import Settings

from .processor import FeatureProcessor, Outputs, Parked
from .recovery import (
    CommitRecord,
    Ledger,
    Replay,
    read_record,
    record_path,
    write_record,
)
from .resume import History, newest_stored, read_starts
from .sink import FeatureSink

log = logging.getLogger(__name__)

ONLINE_EVERY_S = 0.2
"""Online writes at most this often under load (each carries every symbol's newest row): a
Feast write costs milliseconds whatever its size. At live rates a batch ends every poll."""


@dataclass
class PipelineStats:
    trades: int = 0
    candles: int = 0
    features: int = 0
    examples: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    topics_recreated: int = 0  # times the broker had forgotten topics
    replayed: int = 0  # trades read again after a restart or rebalance, already accounted for
    already_emitted: int = 0  # rows a replay found on their topic and did not send again
    already_stored: int = 0  # rows a backfill found in the offline store and did not write

    def counters(self, topic: str) -> Counters:
        """The figures as the shared loop's counters (what `/metrics` exports)."""
        counters = Counters("features")
        counters.read[topic] = self.trades
        counters.done.update(
            candles=self.candles,
            features=self.features,
            examples=self.examples,
            replayed=self.replayed,
            topics_recreated=self.topics_recreated,
        )
        for kind, n in self.rejected.items():
            counters.rejected[topic, kind] = n
        return counters

    def line(self) -> str:
        bad = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        stored = f", already stored {self.already_stored}" if self.already_stored else ""
        if self.replayed or self.already_emitted:
            stored += f", replayed {self.replayed} (already emitted {self.already_emitted})"
        return (
            f"trades {self.trades}, candles {self.candles}, features {self.features}, "
            f"examples {self.examples}{stored}, rejected: {bad}"
        )


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
        self._committed: dict[int, int] = {}  # trades partition -> offset committed
        self._member_at = -math.inf  # when the group last confirmed this member
        # a member that has not heard from its group for this long may have been replaced:
        # it asks before it writes (a stall past the session timeout, then a wake-up)
        self._fence_s = settings.kafka_session_timeout_ms / 2000
        self._history = History()
        self._newest: dict[str, float] = {}  # each symbol's newest stored candle, as known
        self._resumed: dict[str, int] = {}  # symbol -> the trades partition it resumed on
        # symbol -> its partition, for what the sink still buffers of partitions that left
        self._held: dict[str, int] = {}
        # what was held for the symbols of partitions that left, and the `trades` incarnation
        # then: taken up again only if they come back from a broker that forgot that topic
        self._parked: dict[str, Parked] = {}
        self._parked_rows = Outputs()  # what they had not stored yet
        self._parked_id: str | None = None
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
            _RecordingSource(consumer, [self.topics.trades], self._committed_now),
            sink.kafka,
            self.step,
            self.counters,
            stop=self.stop,
            commit_interval_s=self.commit_interval_s,
            flush_s=self._flush_s,
            max_block_s=self._flush_s,
            tick=self._tick,
            on_assign=self._on_assign,
            on_revoke=self._drop,
            on_reject=self._rejected,
            before_commit=self._before_commit,
            committable=self._committable,
            replayed=self._replayed,
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
        committed = self._read_committed(consumer, partitions)
        topics = [self.topics.features, self.topics.examples, dlq(self.topics.trades)]
        records = self._records(committed, trades_id)
        starts = None if records is None else read_starts(records, watch.ids if watch else {})
        self._replay, ends = Replay.read(self.settings, topics, starts)
        self._ledger.read_to(ends)
        newest = None if records is None else newest_stored(records)
        history = self._history = History.read(
            self.settings, self.settings.horizon, trades_id, newest
        )
        self._newest = {**(newest or {}), **history.stored}
        self._replay.through = history.counted.through
        self._member_at = time.monotonic()
        if sink is None:
            return
        self._held = {s: p for s, p in self._held.items() if p in self.assignment}
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

    def _unpark(self, trades_id: str | None) -> set[str]:
        """Symbols of partitions that are back after a broker restart resume where they were,
        open windows and all: the forgotten topic cannot replay their trades. After any other
        rebalance their new owner replays from the commit, and what was parked goes."""
        parked, self._parked = self._parked, {}
        rows, self._parked_rows = self._parked_rows, Outputs()
        if self._parked_id is None or trades_id == self._parked_id:
            self._parked_id = trades_id
            return set()
        self._parked_id = trades_id
        back = {s for s, p in self._held.items() if p in self.assignment and s in parked}
        for symbol in back:
            self.processor.unpark(symbol, parked[symbol])
            self._resumed[symbol] = self._held[symbol]
        if self._sink is not None:  # what they had not stored yet: written before they go on
            self._sink.give(_rows_of(rows, back))
        log.info("%d symbols resume as they were before the broker forgot `trades`", len(back))
        return back

    def _symbols_of(self, partitions: set[int]) -> set[str]:
        return {s for s, p in self._resumed.items() if p in partitions}

    def _read_committed(
        self, consumer: Consumer | None, partitions: list[Position]
    ) -> dict[int, int]:
        """The group's committed offset of each assigned partition (-1: none yet)."""
        if consumer is None:
            return {p: -1 for _, p in partitions}
        asked = [TopicPartition(t, p) for t, p in partitions]
        try:
            found = consumer.committed(asked, timeout=10)
        except KafkaException as exc:
            log.warning("the committed offsets could not be read (%s): reading back all", exc)
            return {p: -1 for _, p in partitions}
        for tp in found:
            self._committed[tp.partition] = tp.offset if tp.offset >= 0 else -1
        return {tp.partition: self._committed[tp.partition] for tp in found}

    def _records(
        self, committed: dict[int, int], trades_id: str | None
    ) -> list[CommitRecord] | None:
        """The commit records of the assigned partitions, or None (read every output back,
        and the whole store) when a partition has none (a new group, or one never committed
        before a crash), or its record belongs to another `trades` or to offsets moved back."""
        records = []
        for partition, offset in committed.items():
            path = record_path(self.settings, self.group_id, self.topics.trades, partition)
            record = read_record(path)
            if record is None:
                log.info("no commit record for %s: reading every output back", path.name)
                return None
            if record.trades_id != trades_id or record.committed > offset:
                log.warning(
                    "the commit record of %s[%d] is of another incarnation or offset (%s@%d, "
                    "group at %d): reading every output back",
                    self.topics.trades,
                    partition,
                    record.trades_id,
                    record.committed,
                    offset,
                )
                return None
            records.append(record)
        return records

    def _committed_now(self, offsets: dict[Position, int]) -> None:
        """A commit went through: the group still has this member, and each partition's
        commit record says where its outputs stood."""
        self._member_at = time.monotonic()
        watch = self._watch
        ids = watch.ids if watch is not None else {}
        self._committed.update({p: o for (_, p), o in offsets.items()})
        # a record for every partition held, committed now or before (or never: -1)
        committed = {p: self._committed.get(p, -1) for p in self.assignment}
        starts = self._ledger.starts(committed)
        sink = self._sink
        newest = self._newest = {**self._newest, **(sink.stored if sink is not None else {})}
        by_topic: dict[str, dict[int, int]] = {}
        for (topic, q), offset in starts.items():
            by_topic.setdefault(topic, {})[q] = offset
        for partition, offset in committed.items():
            record = CommitRecord(
                trades_id=ids.get(self.topics.trades),
                committed=offset,
                starts=by_topic,
                ids={t: ids.get(t) for t in by_topic},
                newest=newest,
            )
            path = record_path(self.settings, self.group_id, self.topics.trades, partition)
            try:
                write_record(path, record)
            except OSError as exc:  # the next commit writes it again; a replay reads more
                log.warning("commit record %s not written: %s", path, exc)

    def _still_member(self) -> bool:
        """Whether the group still has this member, asked of the broker when it has not said
        so for `_fence_s`: a commit of the offsets already committed is refused to a member
        the group replaced (a stall past the session timeout). Such a member writes nothing
        more, drops its partitions, and rejoins at its next poll."""
        consumer = self._consumer
        if consumer is None or time.monotonic() - self._member_at < self._fence_s:
            return True
        offsets = [
            TopicPartition(self.topics.trades, p, max(self._committed.get(p, 0), 0))
            for p in sorted(self.assignment)
        ]
        if not offsets:
            return True
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() not in _FENCED:
                return True  # the broker away: the produce waits for it anyway
            log.warning(
                "the group replaced this member while it was stalled (%s): it writes nothing "
                "of what it read and rejoins",
                exc.args[0].name(),
            )
            self._fenced()
            return False
        self._member_at = time.monotonic()
        return True

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
        gone = self._symbols_of(partitions)
        for symbol in gone:
            if (parked := self.processor.park(symbol)) is not None:
                self._parked[symbol] = parked
            self._held[symbol] = self._resumed.pop(symbol)
        if self._sink is not None:  # their new owner writes them, unless the broker forgot
            self._parked_rows.extend(self._sink.take(gone))
        self._replay.forget(gone)
        for p in partitions:
            self._committed.pop(p, None)

    def _resume(self, symbol: str, partition: int) -> None:
        """`symbol`'s first trade since this member got its partition: start where the offline
        store's newest candles left it."""
        self._history.resume(self.processor, symbol)
        self._resumed[symbol] = self._held[symbol] = partition

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
            resumed_on = self._resumed.get(trade.symbol)
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


_FENCED = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
"""What a broker answers a member whose group has moved on without it."""


class _RecordingSource(GroupSource):
    """The group source, telling the pipeline of each commit that went through."""

    def __init__(
        self,
        consumer: Consumer,
        topics: list[str],
        committed: Callable[[dict[Position, int]], None],
    ) -> None:
        super().__init__(consumer, topics)
        self._committed = committed

    def commit(self, offsets: dict[Position, int]) -> bool:
        done = super().commit(offsets)
        if done:
            self._committed(offsets)
        return done


def _rows_of(rows: Outputs, symbols: set[str]) -> Outputs:
    """The rows of `symbols` in `rows`."""
    return Outputs(
        candles=[c for c in rows.candles if c.symbol in symbols],
        sources=[s for c, s in zip(rows.candles, rows.sources, strict=True) if c.symbol in symbols],
        features=[r for r in rows.features if r.symbol in symbols],
        examples=[e for e in rows.examples if e.symbol in symbols],
    )
