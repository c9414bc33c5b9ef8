"""In-memory stand-ins for a consumer and a producer, for tests of `rtml.runner.Runner`: what
the loop decides is checked record by record, without a broker."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from confluent_kafka import Message

from rtml.consumers import Position, Rebalance


class MemorySource:
    """Records from memory, for tests: `batches` are handed out one per `consume`; a
    `rebalance` acts as the group's would, from inside the next `consume`. Once the batches
    run out it sets `drained`, which a test passes as the runner's `stop`."""

    def __init__(
        self,
        batches: Iterable[Sequence[Message]],
        partitions: Iterable[Position],
        drained: threading.Event | None = None,
    ) -> None:
        self.batches = [list(b) for b in batches]
        self.partitions = list(partitions)
        self.drained = drained or threading.Event()
        self.committed: list[dict[Position, int]] = []
        self.closed = False
        self._events: list[tuple[int, str, list[Position]]] = []
        self._callbacks: dict[str, Rebalance] = {}
        self._consumed = 0
        self.paused: set[Position] = set()
        self.pauses: list[list[Position]] = []
        self.consumed_paused = 0  # consume calls while paused: the member stays in its group

    def start(self, on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance) -> None:
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        on_assign(list(self.partitions))

    def rebalance(self, before: int, event: str, partitions: list[Position]) -> None:
        """`event` ("assign", "revoke" or "lost") happens before batch number `before` (from 0)
        is handed out, inside that `consume` call as librdkafka's callbacks are."""
        self._events.append((before, event, partitions))

    def consume(self, num_messages: int, timeout: float) -> Sequence[Message]:
        for due in [e for e in self._events if e[0] <= self._consumed]:
            self._events.remove(due)
            self._callbacks[due[1]](due[2])
        if self.paused:
            self.consumed_paused += 1
            return []
        if not self.batches:
            self.drained.set()
            return []
        self._consumed += 1
        return self.batches.pop(0)

    def commit(self, offsets: dict[Position, int]) -> bool:
        self.committed.append(dict(offsets))
        return True

    def pause(self, partitions: list[Position]) -> None:
        """While any partition is paused, `consume` hands out no batch (rebalances still
        happen); `pauses` lists the calls."""
        self.paused.update(partitions)
        self.pauses.append(list(partitions))

    def resume(self, partitions: list[Position]) -> None:
        self.paused.difference_update(partitions)

    def close(self) -> None:
        self.closed = True


class MemorySink:
    """Produced records in memory, for tests: `sent` lists (topic, key, value); `flushes`
    counts the flushes, `pending` what was produced since the last one."""

    def __init__(self, capacity: int | None = None, per_poll: int | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.flushes = 0
        self.pending = 0
        self.capacity = capacity
        """With a capacity, a produce beyond it raises BufferError until a poll or a flush
        delivers what is pending, as a Kafka producer's full local queue does."""
        self.polls = 0
        self.per_poll = per_poll
        self.peak = 0  # the most records ever waiting for delivery
        """With `per_poll`, a poll delivers at most that many (a slow broker)."""

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        if self.capacity is not None and self.pending >= self.capacity:
            raise BufferError("Local: Queue full")
        self.sent.append((topic, key, value))
        self.pending += 1
        self.peak = max(self.peak, self.pending)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        delivered = min(self.pending, self.per_poll or self.pending)
        self.pending -= delivered
        return delivered

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        self.pending = 0
        return 0

    def __len__(self) -> int:
        return self.pending

    def on(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        return [(k, v) for t, k, v in self.sent if t == topic]
