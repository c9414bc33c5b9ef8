"""The one consume → guard → step → dead-letter → commit loop that rtml's consumers share.

A component hands the runner a step: one record in, its effects done (learned, predicted,
produced), or `BadRecord` raised when the record cannot be used. The runner owns the rest:

- batched consumption, and the one size guard before any parsing;
- a dead letter for every rejected record: its class, its key (or its partition's name), where
  it came from and a bounded copy of its value (`rtml.dead_letters`). An exception that is not
  a `BadRecord` is a bug the record found: it is logged with its traceback and dead-lettered
  as `error`, and the loop goes on;
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

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import (
    KafkaError,
    Message,
)

from rtml.consumers import Position, Rebalance, Source
from rtml.dead_letters import letter, replay_of
from rtml.kafka import Sink, dlq, send
from rtml.metrics import Counters
from rtml.records import MAX_RECORD_BYTES, BadRecord

log = logging.getLogger(__name__)

Step = Callable[[Message], None]


@dataclass(frozen=True)
class Pace:
    """How a runner reads, commits and waits."""

    commit_interval_s: float = 1.0  # commits at most this often
    batch_size: int = 1000
    poll_s: float = 0.2
    flush_s: float = 30.0  # the longest a commit waits for deliveries at a stop or revoke
    # the longest the loop goes without polling its consumer, outside rebalances and the
    # stop: well under max.poll.interval.ms (10 s), or the group evicts this member
    max_block_s: float = 3.0
    # records produced and not delivered past which reading waits (a slow broker)
    backlog: int = 50_000


@dataclass(frozen=True)
class Hooks:
    """What a component adds to the loop; each is optional."""

    tick: Callable[[], None] | None = None  # once per loop turn: periodic work
    ready: Callable[[], bool] | None = None  # False: leave records unread for a moment
    on_assign: Rebalance | None = None
    on_revoke: Rebalance | None = None
    on_reject: Callable[[str, str], None] | None = None  # (topic, class) of every reject
    # what a component holds across records: make what was processed durable (False: skip
    # this commit); lower offsets to what may be committed; tell a reject dead-lettered before
    before_commit: Callable[[], bool] | None = None
    committable: Callable[[dict[Position, int]], dict[Position, int]] | None = None
    replayed: Callable[[str, bytes | None, bytes], bool] | None = None


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
        pace: Pace = Pace(),
        hooks: Hooks = Hooks(),
        dead_letters: Iterable[str] | None = None,
        outcome: str | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.step = step
        self.counters = counters
        self.stop = stop or threading.Event()
        self.pace = pace
        self.hooks = hooks
        # the topics whose rejects this component dead-letters (None: all it reads); a topic
        # read by several components is dead-lettered by its owner only, and counted by all
        self.dead_letters = None if dead_letters is None else frozenset(dead_letters)
        self.outcome = outcome  # what a record stepped through without a reject counts as
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
        if self.hooks.on_assign:
            self._in_rebalance = True
            try:
                self.hooks.on_assign(partitions)
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
        if self.hooks.on_revoke:
            self.hooks.on_revoke(partitions)

    # -- the loop --------------------------------------------------------------------------

    def run(self, max_seconds: float | None = None) -> None:
        deadline = time.monotonic() + max_seconds if max_seconds else None
        self.source.start(self._assigned, self._revoked, self._lost)
        last_commit = time.monotonic()
        try:
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if self.hooks.tick is not None:
                    self.hooks.tick()
                if self.hooks.ready is not None and not self.hooks.ready():
                    self.stop.wait(self.pace.poll_s)
                    continue
                if len(self.sink) > self.pace.backlog:
                    self.wait_for_deliveries()
                if self._kept and self._holding is None:  # handed out while paused: first
                    kept, self._kept = self._kept, []
                    self.handle(kept)
                self.handle(self.source.consume(self.pace.batch_size, self.pace.poll_s))
                # serve delivery reports as they come: the producer counts a record as waiting
                # until its report is served, and the backlog would otherwise fill in a second
                self.sink.poll(0)
                if self.processed and time.monotonic() - last_commit >= self.pace.commit_interval_s:
                    self.commit(self.pace.max_block_s)
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
        if self.hooks.replayed is not None and self.hooks.replayed(dlq(topic), key, value):
            self.counters.done["replayed"] += 1  # its dead letter is on the DLQ already
            return
        self.counters.reject(topic, kind)
        if self.hooks.on_reject is not None:
            self.hooks.on_reject(topic, kind)
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
        while len(self.sink) > self.pace.backlog // 2 and not self.stop.is_set():
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
        self._kept.extend(self.source.consume(self.pace.batch_size, 0))
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
        if self.hooks.before_commit is not None and not self.hooks.before_commit():
            return
        if (unsent := self.sink.flush(self.pace.flush_s if flush_s is None else flush_s)) > 0:
            log.warning("%d records not yet delivered; offsets not committed", unsent)
            return
        offsets = dict(self.processed)
        if self.hooks.committable is not None:
            offsets = self.hooks.committable(offsets)
        if self.source.commit(offsets):
            for position, offset in offsets.items():
                if self.processed.get(position) == offset:
                    del self.processed[position]  # committed up to where it was read
            self.commits += 1
