"""What the feature pipeline needs to recover exactly, from what only it writes.

A pipeline that stops without committing (`kill -9`, a lost host, a partition that moved) is
replayed from its last committed offset, and what it sent after that commit would be sent
again. Three things of its own tell it what not to repeat; nothing anyone else can write to
`features`, `examples` or a DLQ changes what it emits, dead-letters or skips:

- **Commit records** (`CommitRecord`): with each commit of a `trades` partition the pipeline
  writes, beside the offline store, where each of its output partitions stood when the oldest
  trade not yet committed was read. At an assignment it reads its outputs from there to
  their end, for the assigned partitions only: a cost bounded by the records since the last
  commit, whatever the topics hold.
- **Byte-identical copies** (`Replay.already_sent`): a replay rebuilds the same candles from
  the same trades, so each row or dead letter it would send again is byte for byte one that
  is on its topic since that point, and is not sent twice. A record someone else wrote there
  can only ever hold back a copy of itself: the topic holds the same bytes either way.
- **The offline store's candles** carry the position of the trade that closed them
  (`source_topic`, `source_partition`, `source_offset`): a replayed trade at or before the
  newest stored one of its symbol was counted in a candle (or dead-lettered) before, so it is
  neither a candle's trade again nor `late`.

Kafka transactions would make the first two unnecessary where `read_committed` consumers do
not see aborted records. The embedded broker does not hide them (tests/test_recovery.py shows
it), so rtml recovers this way, which works the same on every broker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pandas as pd
from confluent_kafka import Message

from rtml.kafka import scan
from rtml.settings import Settings

log = logging.getLogger(__name__)

COMMITS = "_commits"
"""The folder of commit records in the offline store's directory (Feast reads its datasets'
folders only)."""

Partition = tuple[str, int]


class CommitRecord(msgspec.Struct, frozen=True):
    """Written after a commit of one `trades` partition: read outputs back from `starts`."""

    trades_id: str | None  # the incarnation of `trades` (a broker restart makes a new one)
    committed: int  # the offset committed
    starts: dict[str, dict[int, int]]  # output topic -> partition -> offset to read from
    ids: dict[str, str | None]  # output topic -> its incarnation when the starts were taken
    # each symbol's newest candle in the offline store, as the member knew it: a quiet
    # symbol resumes from around it, a symbol not in it has none (None: not known)
    newest: dict[str, float] | None = None


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(CommitRecord)


def record_path(settings: Settings, group: str, topic: str, partition: int) -> Path:
    return settings.offline_dir / COMMITS / group / f"{topic}-{partition}.json"


def write_record(path: Path, record: CommitRecord) -> None:
    """Atomically (a temporary file renamed over the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(_ENCODER.encode(record))
    tmp.replace(path)


def read_record(path: Path) -> CommitRecord | None:
    """The record at `path`; None if there is none or it cannot be read (then the outputs are
    read back from their start, as for a pipeline that never committed)."""
    try:
        return _DECODER.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        log.warning(
            "commit record %s cannot be read (%s): reading outputs from their start", path, exc
        )
        return None


def digest(topic: str, key: bytes | None, value: bytes | None) -> bytes:
    """A record's identity: its topic, key and value (16 bytes of BLAKE2b).

    >>> a = digest("t", b"A", b"1")
    >>> a == digest("t", b"A", b"1"), a == digest("t", None, b"A1"), a == digest("t", b"A1", b"")
    (True, False, False)
    """
    h = hashlib.blake2b(digest_size=16)
    for part in (topic.encode(), key, value):
        h.update(b"\xff" if part is None else len(part).to_bytes(8, "big") + part)
    return h.digest()


@dataclass
class Ledger:
    """Where the pipeline's own records stand on each output partition, from its delivery
    reports and its read-backs, and a snapshot of that per batch: the starts of a commit
    record are those of the newest snapshot taken before the oldest trade not yet committed
    was read (earlier than needed is safe; later is not)."""

    ends: dict[Partition, int] = field(default_factory=dict)
    # the first position known of each partition: nothing of ours lies before it since
    known_from: dict[Partition, int] = field(default_factory=dict)
    _snapshots: deque[tuple[dict[int, int], dict[Partition, int]]] = field(default_factory=deque)

    def delivered(self, topic: str, partition: int, offset: int) -> None:
        where = (topic, partition)
        if offset >= 0 and offset + 1 > self.ends.get(where, -1):
            self.ends[where] = offset + 1
            self.known_from.setdefault(where, offset)

    def read_to(self, ends: dict[Partition, int]) -> None:
        """A read-back reached these ends: everything of ours before them is known."""
        for where, offset in ends.items():
            if offset > self.ends.get(where, -1):
                self.ends[where] = offset
            self.known_from.setdefault(where, offset)

    def snapshot(self, reading: dict[int, int]) -> None:
        """Before a batch: `reading` is the next offset to read per `trades` partition."""
        if self._snapshots and self._snapshots[-1][1] == self.ends:
            return  # nothing delivered since: the older snapshot says the same, earlier
        self._snapshots.append((dict(reading), dict(self.ends)))

    def starts(self, committed: dict[int, int]) -> dict[Partition, int]:
        """Where to read back from, for a commit of `committed` (partition -> offset); drops
        the snapshots no later commit needs. A partition first known after the snapshot is
        read from where it became known.

        >>> ledger = Ledger()
        >>> ledger.snapshot({0: 10}); ledger.delivered("f", 0, 4); ledger.snapshot({0: 20})
        >>> ledger.starts({0: 15})   # trade 15 was read after the first snapshot
        {('f', 0): 4}
        >>> ledger.starts({0: 20})
        {('f', 0): 5}
        """
        usable = None
        for i, (reading, _) in enumerate(self._snapshots):
            if all(reading.get(p, -1) <= offset for p, offset in committed.items()):
                usable = i
        for _ in range(usable or 0):
            self._snapshots.popleft()
        taken = self._snapshots[0][1] if usable is not None else {}
        return {**self.known_from, **taken}


@dataclass
class Replay:
    """What a replay finds already done: records on the outputs since the commit records'
    starts (by `digest`), and the newest trade each symbol's stored candles counted."""

    sent: Counter[bytes] = field(default_factory=Counter)
    through: dict[tuple[str, int], int] = field(default_factory=dict)  # (symbol, partition)
    records: int = 0

    def already_sent(self, topic: str, key: bytes | None, value: bytes) -> bool:
        """True, once per copy, for a record whose byte-identical copy was read back. Once
        every copy is matched (or none was read back) it costs one test: no digest."""
        if not self.sent:
            return False
        d = digest(topic, key, value)
        left = self.sent.get(d, 0)
        if left <= 0:
            return False
        if left == 1:
            del self.sent[d]
        else:
            self.sent[d] = left - 1
        return True

    def counted(self, symbol: str, partition: int, offset: int) -> bool:
        """True if the trade at `offset` was read before the newest stored candle's close."""
        return offset <= self.through.get((symbol, partition), -1)

    def forget(self, symbols: set[str]) -> None:
        self.through = {k: v for k, v in self.through.items() if k[0] not in symbols}

    @classmethod
    def read(
        cls,
        settings: Settings,
        topics: list[str],
        starts: dict[Partition, int] | None,
        timeout: float = 60.0,
    ) -> tuple[Replay, dict[Partition, int]]:
        """Read `topics` from `starts` (None: every partition from its start) to their end;
        returns the replay and where each partition ended."""
        replay = cls()
        began = time.monotonic()
        ends: dict[Partition, int] = {}

        def take(msg: Message) -> None:
            replay.records += 1
            replay.sent[digest(msg.topic() or "", msg.key(), msg.value())] += 1

        unread = scan(settings, topics, take, timeout, starts=starts, ends=ends)
        if unread:
            log.warning(
                "reading back %s took over %.0f s; %s were not read to their end, so a "
                "replay may send some records twice",
                topics,
                timeout,
                unread,
            )
        log.info(
            "read back %d records %s in %.2f s",
            replay.records,
            "of every output" if starts is None else "since the last commit",
            time.monotonic() - began,
        )
        return replay, ends

    def count_stored(self, frame: pd.DataFrame, trades_id: str | None) -> None:
        """Take each symbol's newest counted trade from its stored candles (rows of the
        current `trades` incarnation only: offsets of a topic the broker forgot mean
        nothing)."""
        if frame.empty or "source_offset" not in frame or trades_id is None:
            return
        own = frame[(frame["source_topic"] == trades_id) & (frame["source_offset"] >= 0)]
        newest = own.groupby(["symbol", "source_partition"])["source_offset"].max()
        for where, offset in newest.items():
            key: tuple[object, object] = where  # type: ignore[assignment]
            self.through[str(key[0]), int(str(key[1]))] = int(offset)
