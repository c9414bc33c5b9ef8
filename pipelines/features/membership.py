"""What a feature pipeline member knows of its group: the offsets it committed, the commit
records it wrote beside them (`recovery.py`), and whether the group still has it (the fence).

A member that stalled past its session timeout may have been replaced; before it writes it
re-commits the offsets already committed, which the broker refuses to a replaced member, and
then writes nothing more of what it read.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from rtml.consumers import GroupSource, Position
from rtml.settings import Settings

from .recovery import CommitRecord, read_record, record_path, write_record

log = logging.getLogger(__name__)

FENCED = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
"""What a broker answers a member whose group has moved on without it."""


class Membership:
    """One member's committed offsets and commit records, and its fence."""

    def __init__(self, settings: Settings, group_id: str, trades: str) -> None:
        self.settings, self.group_id, self.trades = settings, group_id, trades
        self.committed: dict[int, int] = {}  # trades partition -> offset committed
        self.member_at = -math.inf  # when the group last confirmed this member
        # a member that has not heard from its group for this long may have been replaced:
        # it asks before it writes (a stall past the session timeout, then a wake-up)
        self.fence_s = settings.kafka_session_timeout_ms / 2000
        self.newest: dict[str, float] = {}  # each symbol's newest stored candle, as known

    def confirmed(self) -> None:
        self.member_at = time.monotonic()

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.committed.pop(p, None)

    def read_committed(
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
            self.committed[tp.partition] = tp.offset if tp.offset >= 0 else -1
        return {tp.partition: self.committed[tp.partition] for tp in found}

    def records(
        self, committed: dict[int, int], trades_id: str | None
    ) -> list[CommitRecord] | None:
        """The commit records of the assigned partitions, or None (read every output back,
        and the whole store) when a partition has none (a new group, or one never committed
        before a crash), or its record belongs to another `trades` or to offsets moved back."""
        records = []
        for partition, offset in committed.items():
            path = record_path(self.settings, self.group_id, self.trades, partition)
            record = read_record(path)
            if record is None:
                log.info("no commit record for %s: reading every output back", path.name)
                return None
            if record.trades_id != trades_id or record.committed > offset:
                log.warning(
                    "the commit record of %s[%d] is of another incarnation or offset (%s@%d, "
                    "group at %d): reading every output back",
                    self.trades,
                    partition,
                    record.trades_id,
                    record.committed,
                    offset,
                )
                return None
            records.append(record)
        return records

    def write_records(
        self,
        offsets: dict[Position, int],
        assignment: set[int],
        ids: Mapping[str, str | None],
        starts: Callable[[dict[int, int]], dict[Position, int]],
        stored: dict[str, float],
    ) -> None:
        """A commit went through: the group still has this member, and each partition's
        commit record says where its outputs stood (`starts`, from the ledger)."""
        self.confirmed()
        self.committed.update({p: o for (_, p), o in offsets.items()})
        # a record for every partition held, committed now or before (or never: -1)
        committed = {p: self.committed.get(p, -1) for p in assignment}
        newest = self.newest = {**self.newest, **stored}
        by_topic: dict[str, dict[int, int]] = {}
        for (topic, q), offset in starts(committed).items():
            by_topic.setdefault(topic, {})[q] = offset
        for partition, offset in committed.items():
            record = CommitRecord(
                trades_id=ids.get(self.trades),
                committed=offset,
                starts=by_topic,
                ids={t: ids.get(t) for t in by_topic},
                newest=newest,
            )
            path = record_path(self.settings, self.group_id, self.trades, partition)
            try:
                write_record(path, record)
            except OSError as exc:  # the next commit writes it again; a replay reads more
                log.warning("commit record %s not written: %s", path, exc)

    def still_member(self, consumer: Consumer | None, assignment: set[int]) -> bool:
        """Whether the group still has this member, asked of the broker when it has not said
        so for `fence_s`: a commit of the offsets already committed is refused to a member
        the group replaced (a stall past the session timeout). Such a member writes nothing
        more, drops its partitions, and rejoins at its next poll."""
        if consumer is None or time.monotonic() - self.member_at < self.fence_s:
            return True
        offsets = [
            TopicPartition(self.trades, p, max(self.committed.get(p, 0), 0))
            for p in sorted(assignment)
        ]
        if not offsets:
            return True
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() not in FENCED:
                return True  # the broker away: the produce waits for it anyway
            log.warning(
                "the group replaced this member while it was stalled (%s): it writes nothing "
                "of what it read and rejoins",
                exc.args[0].name(),
            )
            return False
        self.confirmed()
        return True


class RecordingSource(GroupSource):
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
