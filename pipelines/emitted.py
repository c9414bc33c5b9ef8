"""What the feature pipeline has already put on its topics, so that a replay emits nothing twice.

A pipeline that stops without committing (`kill -9`, a lost host, a partition that moved to
another replica) is replayed from its last committed offset, and everything it emitted after
that commit would be emitted again. The topics themselves say what is there: a symbol's
features and examples are keyed by symbol, so they sit in one partition in event-time order,
and a produce that was cut short leaves a prefix of them, never a hole (the producer is
idempotent). So a replayed row at or before the newest one of its symbol on the topic is
already there and is not produced again; a dead letter is already there when its key's newest
dead letter came from the same offset or a later one. And each features record carries the
position of the trade that closed its candle (header `rtml.source`): a replayed trade at or
before it was counted in a candle (or dead-lettered) before, so it is neither a candle's trade
again nor `late`.

Kafka transactions would give the same without reading the topics back. The embedded broker
accepts them but does not hide aborted records from `read_committed` consumers, so rtml reads
back instead, which works the same on every broker.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from rtml.kafka import Topics, dlq, scan
from rtml.records import Example, FeatureRow
from rtml.settings import Settings

log = logging.getLogger(__name__)

SOURCE_HEADER = "rtml.source"
_ORIGIN = re.compile(r"\[([0-9]{1,18})\]@([0-9]{1,18})$")
"""A dead letter's origin, `trades[3]@1234`: a partition and an offset as Kafka's (a hostile
copy's 5,000 digits would be past what `int` reads, and stop the pipeline reading back)."""


def _position(text: str) -> bool:
    """Whether a header's part is a partition or an offset as Kafka's: ASCII digits, at most
    18 (`isdigit` takes `²`, which `int` refuses).

    >>> _position("1234"), _position("²"), _position("9" * 5000), _position("")
    (True, False, False, False)
    """
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def source_header(position: tuple[int, int]) -> list[tuple[str, str | bytes | None]]:
    """The header a features record carries: the (partition, offset) of the trade that closed it.

    >>> source_header((2, 41))
    [('rtml.source', b'2@41')]
    """
    return [(SOURCE_HEADER, f"{position[0]}@{position[1]}".encode())]


@dataclass
class Emitted:
    """The newest of each kind the topics hold; empty means "nothing yet": emit everything."""

    features: dict[str, float] = field(default_factory=dict)  # symbol -> newest ts
    examples: dict[str, float] = field(default_factory=dict)  # symbol -> newest ts
    # (symbol, trades partition) -> offset of the newest trade that closed a candle on `features`
    through: dict[tuple[str, int], int] = field(default_factory=dict)
    # (key, trades partition) -> offset of the newest dead-lettered trade
    dead: dict[tuple[bytes, int], int] = field(default_factory=dict)
    records: int = 0

    def new_feature(self, row: FeatureRow) -> bool:
        return row.ts > self.features.get(row.symbol, -math.inf)

    def new_example(self, example: Example) -> bool:
        return example.ts > self.examples.get(example.symbol, -math.inf)

    def counted(self, symbol: str, partition: int, offset: int) -> bool:
        """True if the trade at `offset` was read before the newest candle close on `features`."""
        return offset <= self.through.get((symbol, partition), -1)

    def dead_lettered(self, key: bytes, partition: int, offset: int) -> bool:
        return offset <= self.dead.get((key, partition), -1)

    def forget(self, symbols: set[str]) -> None:
        """Partitions moved away: what is on the topics for them is re-read on their return."""
        for held in (self.features, self.examples):
            for symbol in symbols:
                held.pop(symbol, None)
        self.through = {k: v for k, v in self.through.items() if k[0] not in symbols}
        self.dead = {
            k: v for k, v in self.dead.items() if k[0].decode(errors="replace") not in symbols
        }

    @classmethod
    def read(cls, settings: Settings, topics: Topics, timeout: float = 60.0) -> Emitted:
        """Read `features`, `examples` and `trades.dlq` from their start to their end."""
        emitted = cls()
        trades_dlq = dlq(topics.trades)
        wanted = [topics.features, topics.examples, trades_dlq]
        began = time.monotonic()
        symbols = frozenset(settings.symbols)
        until = time.time() + settings.max_step_s
        unread = scan(
            settings,
            wanted,
            lambda msg: emitted.take(
                topics, msg.topic() or "", msg.key(), msg.value(), msg.headers(), symbols, until
            ),
            timeout,
        )
        if unread:
            log.warning(
                "reading back what is on %s took over %.0f s; %s were not read to their end, "
                "so a replay may send some records twice",
                wanted,
                timeout,
                unread,
            )
        log.info(
            "read back %d records of %s in %.1f s",
            emitted.records,
            wanted,
            time.monotonic() - began,
        )
        return emitted

    def take(
        self,
        topics: Topics,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        symbols: frozenset[str],
        until: float,
    ) -> None:
        """Count one record read back. What the pipeline could not have sent is left out: a
        symbol it does not build, or a time past `until` (the clock plus RTML_MAX_FUTURE_S). A
        stray record on `features` dated 2286 would otherwise hold back every later row of
        its symbol.

        >>> t, e = Topics.of(Settings(topic_prefix="")), Emitted()
        >>> row = b'{"symbol": "A", "ts": 120.0}'
        >>> e.take(t, "features", b"A", row, [("rtml.source", b"0@7")], frozenset("A"), 1e9)
        >>> e.take(t, "features", b"A", b'{"symbol": "A", "ts": 9e9}', None, frozenset("A"), 1e9)
        >>> e.take(t, "features", b"B", b'{"symbol": "B", "ts": 60.0}', None, frozenset("A"), 1e9)
        >>> e.features, e.through
        ({'A': 120.0}, {('A', 0): 7})

        Hostile positions (a header of `²@7`, an origin of 5,000 digits) are passed over:
        >>> e.take(t, "features", b"A", row, [("rtml.source", "²@8".encode())], frozenset("A"), 1e9)
        >>> dead = b'{"origin": "trades[' + b"9" * 5000 + b']@1"}'
        >>> e.take(t, "trades.dlq", b"A", dead, None, frozenset("A"), 1e9)
        >>> e.through, e.dead
        ({('A', 0): 7}, {})
        """
        self.records += 1
        try:
            record = orjson.loads(value or b"null")
        except orjson.JSONDecodeError:
            return
        if not isinstance(record, dict):
            return
        if topic == dlq(topics.trades):
            found = _ORIGIN.search(str(record.get("origin", "")))
            if found and str(record.get("origin", "")).startswith(f"{topics.trades}["):
                at = (key or b"", int(found.group(1)))
                self.dead[at] = max(int(found.group(2)), self.dead.get(at, -1))
            return
        symbol, ts = record.get("symbol"), record.get("ts")
        if symbol not in symbols or not isinstance(ts, int | float) or not ts <= until:
            return
        assert isinstance(symbol, str)
        newest = self.features if topic == topics.features else self.examples
        newest[symbol] = max(float(ts), newest.get(symbol, -math.inf))
        for name, header in headers if isinstance(headers, list) else []:
            if name == SOURCE_HEADER and isinstance(header, bytes):
                partition, _, offset = header.decode(errors="replace").partition("@")
                if _position(partition) and _position(offset):
                    where = (symbol, int(partition))
                    self.through[where] = max(int(offset), self.through.get(where, -1))
