"""The one consume → guard → step → dead-letter → commit loop that rtml's consumers share.

A component hands the runner a step: one record in, its effects done (learned, predicted,
produced), or `BadRecord` raised when the record cannot be used. The runner owns the rest:

- batched consumption, and the one size guard before any parsing;
- a dead letter for every rejected record: its class, its key (or its partition's name), where
  it came from and a bounded copy of its value (`rtml.kafka.dead_letter`). An exception that is
  not a `BadRecord` is a bug the record found: it is logged with its traceback and
  dead-lettered as `error`, and the loop goes on;
- counters of what was read, done and rejected, by topic and class (`Counters`), exported as
  Prometheus metrics by every component (`serve_metrics`);
- commits of only what was processed, after what it led to is delivered: at most every
  `commit_interval_s`, and before partitions leave in a rebalance or the loop stops;
- back-pressure: delivery reports are served every turn; past `backlog` records waiting for
  a slow broker, the partitions are paused and the consumer keeps polling until the broker
  catches up, and a periodic commit waits at most `max_block_s` for deliveries, so the group
  never evicts a member for being slow;
- a clean stop: `stop` set (SIGTERM) ends the batch, flushes, commits, closes.

Source and sink are injectable: `rtml.testing`'s in-memory ones test the cadence, the DLQ
routing and the revoke handling without a broker (tests/test_runner.py). All four consumers
run on it: the feature pipeline adds the hooks for what it holds across records (its commit
is lowered to the first trade of a window still open; a replay does not dead-letter twice).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client.core import CounterMetricFamily, Metric

from rtml.kafka import Sink, dlq, letter, replay_of, send
from rtml.records import MAX_RECORD_BYTES, BadRecord
from rtml.settings import Settings

log = logging.getLogger(__name__)

Position = tuple[str, int]
"""(topic, partition)"""
Rebalance = Callable[[list[Position]], None]


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


class Source(Protocol):
    """Where records come from: a consumer group, partitions assigned by hand, or memory."""

    def start(self, on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance) -> None: ...

    def consume(self, num_messages: int, timeout: float) -> Sequence[Message]: ...

    def commit(self, offsets: dict[Position, int]) -> bool: ...

    def pause(self, partitions: list[Position]) -> None: ...

    def resume(self, partitions: list[Position]) -> None: ...

    def close(self) -> None: ...


class GroupSource:
    """A consumer-group member: partitions come and go with the group's rebalances."""

    def __init__(self, consumer: Consumer, topics: Iterable[str]) -> None:
        self.consumer = consumer
        self.topics = list(topics)

    def start(self, on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance) -> None:
        def positions(parts: list[TopicPartition]) -> list[Position]:
            return [(tp.topic, tp.partition) for tp in parts]

        self.consumer.subscribe(
            self.topics,
            on_assign=lambda _, parts: on_assign(positions(parts)),
            on_revoke=lambda _, parts: on_revoke(positions(parts)),
            on_lost=lambda _, parts: on_lost(positions(parts)),
        )

    def consume(self, num_messages: int, timeout: float) -> Sequence[Message]:
        return self.consumer.consume(num_messages=num_messages, timeout=timeout)

    def commit(self, offsets: dict[Position, int]) -> bool:
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self.consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as exc:  # e.g. a restarted broker that forgot the group
            log.warning("could not commit %s (%s); the next commit carries them", offsets, exc)
            return False
        return True

    def pause(self, partitions: list[Position]) -> None:
        self.consumer.pause([TopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions: list[Position]) -> None:
        self.consumer.resume([TopicPartition(t, p) for t, p in partitions])

    def close(self) -> None:
        self.consumer.close()


class AssignedSource(GroupSource):
    """Partitions assigned by hand from offsets the component keeps itself (the trainer's are
    in its checkpoint): nothing is committed to the group."""

    def __init__(self, consumer: Consumer, topic: str, offsets: dict[int, int]) -> None:
        super().__init__(consumer, [topic])
        self.offsets = offsets
        self._on_assign: Rebalance | None = None

    def start(self, on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance) -> None:
        self._on_assign = on_assign
        self.assign()

    def partitions(self) -> list[int]:
        topic = self.topics[0]
        return sorted(self.consumer.list_topics(topic, timeout=10).topics[topic].partitions)

    def assign(self, offsets: dict[int, int] | None = None) -> None:
        """(Re-)assign every partition of the topic, each from its offset in `offsets`."""
        if offsets is not None:
            self.offsets = offsets
        topic, start, partitions = self.topics[0], self.offsets, self.partitions()
        self.consumer.assign(
            [TopicPartition(topic, p, start.get(p, OFFSET_BEGINNING)) for p in partitions]
        )
        if self._on_assign is not None:
            self._on_assign([(topic, p) for p in partitions])

    def commit(self, offsets: dict[Position, int]) -> bool:
        """The component's offsets live in its own checkpoint; they also go to its consumer
        group, asynchronously, so Kafka's tools (`kafka-consumer-groups`) show where it is.
        A commit the broker refuses changes nothing."""
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        with contextlib.suppress(KafkaException, RuntimeError):
            self.consumer.commit(offsets=parts, asynchronous=True)
        return True


Step = Callable[[Message], None]


class Runner:
    """Runs `step` over every record of `source` until `stop` is set or the time is up.

    `tick` is called once per loop turn (periodic work: checkpoints, topic watches); `ready`
    returning False leaves records unread for a moment (nothing to serve with yet).
    `on_assign`/`on_revoke` tell the component which partitions it holds; a revoke comes after
    the runner has delivered and committed what the leaving partitions led to. Rejects of a
    topic not in `dead_letters` are counted only: another component owns that topic's DLQ.
    With `outcome`, each record the step took is counted as that (e.g. "predicted").

    A component that holds state across records (the feature pipeline's open windows) adds:
    `before_commit`, which makes what was processed durable and returns False to skip this
    commit; `committable`, which lowers offsets to what may be committed (never past an open
    window's first record); and `replayed`, which tells a reject that was dead-lettered before
    (read again after a restart) so it is not sent twice. `hold`/`release` keep the group
    membership while a step or a write waits on a service that is away.
    """

    def __init__(
        self,
        source: Source,
        sink: Sink,
        step: Step,
        counters: Counters,
        *,
        stop: threading.Event | None = None,
        commit_interval_s: float = 1.0,
        batch_size: int = 1000,
        poll_s: float = 0.2,
        flush_s: float = 30.0,
        tick: Callable[[], None] | None = None,
        ready: Callable[[], bool] | None = None,
        on_assign: Rebalance | None = None,
        on_revoke: Rebalance | None = None,
        dead_letters: Iterable[str] | None = None,
        outcome: str | None = None,
        on_reject: Callable[[str, str], None] | None = None,
        max_block_s: float = 3.0,
        backlog: int = 50_000,
        before_commit: Callable[[], bool] | None = None,
        committable: Callable[[dict[Position, int]], dict[Position, int]] | None = None,
        replayed: Callable[[str, bytes | None, bytes], bool] | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.step = step
        self.counters = counters
        self.stop = stop or threading.Event()
        self.commit_interval_s = commit_interval_s
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.flush_s = flush_s
        self.tick = tick
        self.ready = ready
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        # the topics whose rejects this component dead-letters (None: all it reads); a topic
        # read by several components is dead-lettered by its owner only, and counted by all
        self.dead_letters = None if dead_letters is None else frozenset(dead_letters)
        self.outcome = outcome  # what a record stepped through without a reject counts as
        self.on_reject = on_reject  # told (topic, class) of every reject, the guard's too
        # the longest the loop goes without polling its consumer, outside rebalances and the
        # stop: well under max.poll.interval.ms (10 s), or the group evicts this member
        self.max_block_s = max_block_s
        # records produced and not delivered past which reading waits (a slow broker)
        self.backlog = backlog
        self.before_commit = before_commit
        self.committable = committable
        self.replayed = replayed
        self.assignment: set[Position] = set()
        self.processed: dict[Position, int] = {}  # next offset to read, not yet committed
        self.commits = 0
        self._holding: list[Position] | None = None  # paused by `hold`, until `release`
        self._kept: list[Message] = []  # handed out by polls while paused: stepped next
        self._in_rebalance = False

    # -- rebalances ------------------------------------------------------------------------

    def _assigned(self, partitions: list[Position]) -> None:
        log.info("%s: assigned %s", self.counters.component, sorted(partitions))
        self.assignment.update(partitions)
        if self.on_assign:
            self._in_rebalance = True
            try:
                self.on_assign(partitions)
            finally:
                self._in_rebalance = False

    def _revoked(self, partitions: list[Position]) -> None:
        log.info("%s: revoked %s", self.counters.component, sorted(partitions))
        self._in_rebalance = True
        try:
            # what the leaving partitions led to, before their new owner reads on; not while
            # held inside a write waiting on a service (the next owner replays, and nothing is
            # sent twice)
            if self._holding is None:
                self.commit()
            self._dropped(partitions)
        finally:
            self._in_rebalance = False

    def _lost(self, partitions: list[Position]) -> None:
        log.warning("%s: lost %s without a revoke", self.counters.component, sorted(partitions))
        self._in_rebalance = True
        try:
            self._dropped(partitions)  # their new owner has them: nothing may be committed
        finally:
            self._in_rebalance = False

    def drop(self, partitions: list[Position]) -> None:
        """Let go of `partitions` without a commit: the component found its group has moved
        on without it (their new owner replays what was not committed)."""
        log.warning("%s: dropped %s", self.counters.component, sorted(partitions))
        self._dropped(partitions)

    def _dropped(self, partitions: list[Position]) -> None:
        self.assignment.difference_update(partitions)
        for position in partitions:
            self.processed.pop(position, None)
        if self.on_revoke:
            self.on_revoke(partitions)

    # -- the loop --------------------------------------------------------------------------

    def run(self, max_seconds: float | None = None) -> None:
        deadline = time.monotonic() + max_seconds if max_seconds else None
        self.source.start(self._assigned, self._revoked, self._lost)
        last_commit = time.monotonic()
        try:
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if self.tick is not None:
                    self.tick()
                if self.ready is not None and not self.ready():
                    self.stop.wait(self.poll_s)
                    continue
                if len(self.sink) > self.backlog:
                    self.wait_for_deliveries()
                if self._kept and self._holding is None:  # handed out while paused: first
                    kept, self._kept = self._kept, []
                    self.handle(kept)
                self.handle(self.source.consume(self.batch_size, self.poll_s))
                # serve delivery reports as they come: the producer counts a record as waiting
                # until its report is served, and the backlog would otherwise fill in a second
                self.sink.poll(0)
                if self.processed and time.monotonic() - last_commit >= self.commit_interval_s:
                    self.commit(self.max_block_s)
                    last_commit = time.monotonic()
            self.commit()
        finally:
            self.source.close()
            self.sink.flush(10)

    def handle(self, batch: Sequence[Message]) -> None:
        """Step through one batch; each record is processed, rejected, or (end of partition,
        a partition that has left) passed over. Counts are added once per batch."""
        counters, processed, assignment = self.counters, self.processed, self.assignment
        step, stop = self.step, self.stop
        read: dict[str, int] = {}
        done = 0
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: consumer error: %s", counters.component, error)
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            position = (topic, partition)
            if position not in assignment:
                continue  # fetched before a revoke in this batch: its new owner reads it
            read[topic] = read.get(topic, 0) + 1
            value, key = msg.value(), msg.key()
            try:
                size = (len(value) if value else 0) + (len(key) if key else 0)
                if size > MAX_RECORD_BYTES:
                    raise BadRecord(
                        "too_large",
                        f"{size} bytes of key and value; a record is at most {MAX_RECORD_BYTES}",
                    )
                step(msg)
                done += 1
            except BadRecord as exc:
                self.reject(msg, exc.kind, str(exc))
            except Exception as exc:  # a bug this record found: it must not stop the loop
                log.exception("%s: %s[%d]@%d failed", counters.component, topic, partition, offset)
                self.reject(msg, "error", f"error: {type(exc).__name__}: {exc}")
            processed[position] = offset + 1
            if stop.is_set():
                break  # the rest of the batch is read again at the next start
        counters.read.update(read)
        if self.outcome is not None and done:
            counters.done[self.outcome] += done

    def reject(self, msg: Message, kind: str, reason: str) -> None:
        topic = msg.topic() or ""
        origin = f"{topic}[{msg.partition()}]@{msg.offset()}"
        key, value = letter(
            reason, msg.value(), key=msg.key(), origin=origin, replay_of=replay_of(msg.headers())
        )
        if self.replayed is not None and self.replayed(dlq(topic), key, value):
            self.counters.done["replayed"] += 1  # its dead letter is on the DLQ already
            return
        self.counters.reject(topic, kind)
        if self.on_reject is not None:
            self.on_reject(topic, kind)
        log.debug("%s: rejected %s: %s", self.counters.component, origin, reason)
        if self.dead_letters is not None and topic not in self.dead_letters:
            return
        send(self.sink, dlq(topic), value, key=key)

    def wait_for_deliveries(self) -> None:
        """Back-pressure: more records wait for the broker than `backlog` (it is slow, or
        away), so reading more would only fill the producer's queue until a produce fails.
        The partitions are paused and the consumer keeps polling (the group keeps this member,
        and rebalances are served) until half of them are delivered. What a poll still hands
        out is stepped through afterwards, in order."""
        log.warning(
            "%s: %d records wait for the broker; reading paused",
            self.counters.component,
            len(self.sink),
        )
        while len(self.sink) > self.backlog // 2 and not self.stop.is_set():
            self.sink.poll(0.1)
            self.hold()
        self.release()
        log.info("%s: the broker caught up; reading resumed", self.counters.component)

    def hold(self) -> None:
        """Keep this member in its group while the loop waits (a service away inside a step or
        a write, a slow broker): every partition held is paused and the consumer polls once,
        which serves rebalances. Call it at least every few seconds while waiting. What a poll
        still hands out is kept, and stepped through after `release`, in order. Inside a
        rebalance callback it does nothing: the group is waiting on this member already."""
        if self._in_rebalance:
            return
        if self._holding is None:
            self._holding = sorted(self.assignment)
            self.source.pause(self._holding)
            log.warning("%s: partitions paused, membership kept", self.counters.component)
        self._kept.extend(self.source.consume(self.batch_size, 0))
        if joined := sorted(self.assignment.difference(self._holding)):  # assigned meanwhile
            self.source.pause(joined)
            self._holding.extend(joined)

    def release(self) -> None:
        """Read on after `hold`: the partitions still held resume."""
        if self._holding is None:
            return
        held, self._holding = self._holding, None
        self.source.resume([p for p in held if p in self.assignment])
        log.info("%s: partitions resumed", self.counters.component)

    def commit(self, flush_s: float | None = None) -> None:
        """Deliver what was produced (waiting up to `flush_s`, the runner's `flush_s` by
        default), then commit what led to it; nothing is committed while deliveries are
        outstanding (the next commit carries it)."""
        if not self.processed:
            return
        if self.before_commit is not None and not self.before_commit():
            return
        if (unsent := self.sink.flush(self.flush_s if flush_s is None else flush_s)) > 0:
            log.warning("%d records not yet delivered; offsets not committed", unsent)
            return
        offsets = dict(self.processed)
        if self.committable is not None:
            offsets = self.committable(offsets)
        if self.source.commit(offsets):
            for position, offset in offsets.items():
                if self.processed.get(position) == offset:
                    del self.processed[position]  # committed up to where it was read
            self.commits += 1
