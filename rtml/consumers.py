"""Where a runner reads: a consumer group's partitions, or partitions assigned at offsets of its
own."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

log = logging.getLogger(__name__)


Position = tuple[str, int]
"""(topic, partition)"""
Rebalance = Callable[[list[Position]], None]


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
