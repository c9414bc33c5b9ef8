"""Where the feature pipeline's outputs go: Feast online, the offline parquet parts, Kafka."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from rtml import feature_store as fs
from rtml.kafka import Topics, encode, send
from rtml.metrics import Counters
from rtml.records import Example, FeatureRow
from rtml.settings import Settings

from .indicators import EXTRA_COLUMNS, FEATURE_NAMES, Candle
from .processor import Outputs
from .recovery import Replay
from .targets import target

if TYPE_CHECKING:
    from confluent_kafka import Producer
    from feast import FeatureStore

log = logging.getLogger(__name__)
T = TypeVar("T")

FEATURE_COLUMNS = ["symbol", "event_timestamp", "created", *FEATURE_NAMES, *EXTRA_COLUMNS]


def _frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows in the offline schema: `event_timestamp` and `created` from epoch seconds to UTC."""
    frame = pd.DataFrame.from_records(records, columns=columns)
    for col in ("event_timestamp", "created"):
        frame[col] = pd.to_datetime(frame[col], unit="s", utc=True)
    return frame


def features_frame(rows: Iterable[FeatureRow]) -> pd.DataFrame:
    """Feature rows in the offline/online schema; `created` is the candle's close time too."""
    records = [
        {"symbol": r.symbol, "event_timestamp": r.ts, "created": r.ts, **r.values} for r in rows
    ]
    return _frame(records, FEATURE_COLUMNS)


CANDLE_COLUMNS = [
    "symbol",
    "event_timestamp",
    "created",
    "start",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trades",
]
SOURCE_COLUMNS = ["source_topic", "source_partition", "source_offset"]
"""Where a live candle came from: the `trades` incarnation (its topic id), partition and
offset of the trade that closed it; a replay passes over trades up to it (recovery.py)."""

Source = tuple[int, int] | None


def candles_frame(
    candles: Iterable[Candle],
    sources: Iterable[Source] | None = None,
    topic_id: str | None = None,
) -> pd.DataFrame:
    """Closed candles; event_timestamp and created are the candle's close (its `end`). With
    `sources`, where each came from (`SOURCE_COLUMNS`; -1 for a candle no trade closed)."""
    candles = list(candles)
    frame = _frame(_candle_records(candles), CANDLE_COLUMNS)
    if sources is not None:
        where = [s if s is not None else (-1, -1) for s in sources]
        frame["source_topic"] = pd.Series([topic_id or ""] * len(where), dtype="string")
        frame["source_partition"] = pd.Series([p for p, _ in where], dtype="int64")
        frame["source_offset"] = pd.Series([o for _, o in where], dtype="int64")
    return frame


def _candle_records(candles: list[Candle]) -> list[dict[str, Any]]:
    return [
        {
            "symbol": c.symbol,
            "event_timestamp": c.end,
            "created": c.end,
            "start": c.start,
            "open": c.open,
            "high": c.high,
            "low": c.low,
            "close": c.close,
            "volume": c.volume,
            "vwap": c.vwap,
            "trades": c.trades,
        }
        for c in candles
    ]


def read_candles(frame: pd.DataFrame) -> list[Candle]:
    """The candles of a `candles_frame` (as read back from the offline store), in its order."""
    ends = (frame["event_timestamp"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    prices = [
        frame[c].astype(float).tolist()
        for c in ("start", "open", "high", "low", "close", "volume", "vwap")
    ]
    rows = zip(
        frame["symbol"].astype(str).tolist(),
        ends.astype(float).tolist(),
        *prices,
        frame["trades"].astype(int).tolist(),
        strict=True,
    )
    return [
        Candle(symbol, start, end, o, h, low, c, v, w, n)
        for symbol, end, start, o, h, low, c, v, w, n in rows
    ]


def targets_frame(examples: Iterable[Example], column: str) -> pd.DataFrame:
    """Labels in the target's `column`: event_timestamp is the labelled candle's close, created
    is when it became known."""
    records = [
        {"symbol": e.symbol, "event_timestamp": e.ts, "created": e.label_ts, column: e.target}
        for e in examples
    ]
    return _frame(records, ["symbol", "event_timestamp", "created", column])


def retrying(
    what: str,
    action: Callable[[], T],
    stop: threading.Event | None = None,
    retry_on: tuple[type[BaseException], ...] = (ConnectionError, OSError),
    max_backoff_s: float = 5.0,
    idle: Callable[[], None] | None = None,
) -> T:
    """Run `action` until it succeeds, backing off; gives up only when `stop` is set.

    `idle` is called at least every half second while it waits (a consumer keeps its group
    membership that way)."""
    backoff = 0.1
    attempt = 0
    while True:
        try:
            return action()
        except retry_on as exc:
            attempt += 1
            if stop is not None and stop.is_set():
                raise
            log.warning(
                "%s failed (attempt %d): %s; retrying in %.1f s", what, attempt, exc, backoff
            )
            _wait(backoff, idle)
            backoff = min(backoff * 2, max_backoff_s)


def _wait(seconds: float, idle: Callable[[], None] | None) -> None:
    if idle is None:
        time.sleep(seconds)
        return
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        idle()
        time.sleep(min(left, 0.5))


class FeatureSink:
    """Kafka writes happen at once; online writes (each symbol's newest row) at most every
    `online_every_s`; offline rows are buffered into parquet parts.

    An online write through Feast costs a few milliseconds whatever its size: under load one
    every `online_every_s` carries the newest row of every symbol that closed a candle since,
    instead of one per consumed batch. At live rates a batch ends every poll (0.2 s) anyway.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore | None,
        producer: Producer | None,
        stop: threading.Event | None = None,
        online_every_s: float = 0.0,
    ) -> None:
        self.settings = settings
        self.topics = Topics.of(settings)
        self.store = store
        self.producer = producer
        self.stop = stop
        self._features: list[FeatureRow] = []
        self._examples: list[Example] = []
        self._candles: list[Candle] = []
        self._sources: list[Source] = []
        # what was sent since the last commit (read back after a restart or a rebalance):
        # a byte-identical copy is not sent again
        self.replay: Replay | None = None
        self.already_emitted = 0
        # each symbol's newest candle in the offline store: nothing at or before it is
        # written again (a rebuilt stretch must not stand beside the stored one)
        self.stored: dict[str, float] = {}
        self.already_stored = 0
        self.trades_id: str | None = None  # the `trades` incarnation candles came from
        self.idle: Callable[[], None] | None = None  # called while a write waits on a service
        self.online_every_s = online_every_s
        self._online: dict[str, FeatureRow] = {}  # each symbol's newest row, not yet online
        self._online_at = -math.inf

    def write(self, out: Outputs) -> None:
        if out.features:
            for row in out.features:  # oldest first: the newest stays
                self._online[row.symbol] = row
            self.flush_online(due_only=True)
            self._features.extend(out.features)
        self._examples.extend(out.examples)
        self._candles.extend(out.candles)
        self._sources.extend(out.sources or [None] * len(out.candles))
        if self.producer is not None:
            topics = self.topics
            for row in out.features:
                self._send(topics.features, row.symbol.encode(), encode(row.to_json()))
            for ex in out.examples:
                self._send(topics.examples, ex.symbol.encode(), encode(ex.to_json()))
            self.producer.poll(0)

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.replay is not None and self.replay.already_sent(topic, key, value):
            self.already_emitted += 1
            return
        send(self.producer, topic, value, key=key)

    def keep_only(self, symbols: set[str]) -> None:
        """Drop what waits for the stores of every other symbol (its partition moved to
        another member, which writes it)."""
        held = {r.symbol for r in self._features} | {e.symbol for e in self._examples}
        held |= {c.symbol for c in self._candles} | set(self._online)
        self.take(held - symbols)

    def take(self, symbols: set[str]) -> Outputs:
        """What waits for the stores of `symbols`, no longer waiting here (their partitions
        left: written only if they come back, `give`)."""
        taken = Outputs(
            candles=[c for c in self._candles if c.symbol in symbols],
            sources=[
                s for c, s in zip(self._candles, self._sources, strict=True) if c.symbol in symbols
            ],
            features=[r for r in self._features if r.symbol in symbols],
            examples=[e for e in self._examples if e.symbol in symbols],
        )
        self._features = [r for r in self._features if r.symbol not in symbols]
        self._examples = [e for e in self._examples if e.symbol not in symbols]
        kept = [
            (c, s)
            for c, s in zip(self._candles, self._sources, strict=True)
            if c.symbol not in symbols
        ]
        self._candles = [c for c, _ in kept]
        self._sources = [s for _, s in kept]
        self._online = {k: v for k, v in self._online.items() if k not in symbols}
        return taken

    def give(self, rows: Outputs) -> None:
        """Rows `take` took, waiting for the stores again (their topics' records were sent)."""
        self._features.extend(rows.features)
        self._examples.extend(rows.examples)
        self._candles.extend(rows.candles)
        self._sources.extend(rows.sources)

    def flush_online(self, due_only: bool = False) -> None:
        """Write the rows waiting for the online store (`due_only`: if `online_every_s` has
        passed since the last write)."""
        if not self._online or (
            due_only and time.monotonic() - self._online_at < self.online_every_s
        ):
            return
        self.write_online(list(self._online.values()))
        self._online.clear()
        self._online_at = time.monotonic()

    def write_online(self, rows: list[FeatureRow]) -> None:
        if self.store is None:
            return
        latest = {r.symbol: r for r in rows}  # rows arrive oldest first; Redis keeps the newest
        frame = features_frame(latest.values())
        store = self.store
        retrying(
            "online feature write",
            lambda: store.push(fs.PUSH_SOURCE, frame, to=_online()),
            self.stop,
            retry_on=fs.redis_errors(),
            idle=self.idle,
        )

    @property
    def kafka(self) -> Producer:
        """The producer, for a sink that has one."""
        if self.producer is None:
            raise RuntimeError("this sink writes to no topic")
        return self.producer

    @property
    def pending_offline(self) -> int:
        return len(self._features) + len(self._examples) + len(self._candles)

    def flush_offline(self) -> list[tuple[Candle, Source]]:
        """Append buffered rows as new parquet parts: durable before offsets are committed.
        Rows at or before their symbol's newest stored candle are not written again. Returns
        the candles written, with where each came from."""
        offline, stored = self.settings.offline_dir, self.stored
        features = [r for r in self._features if r.ts > stored.get(r.symbol, -math.inf)]
        examples = [e for e in self._examples if e.label_ts > stored.get(e.symbol, -math.inf)]
        kept = [
            (c, s)
            for c, s in zip(self._candles, self._sources, strict=True)
            if c.end > stored.get(c.symbol, -math.inf)
        ]
        self.already_stored += len(self._candles) - len(kept)
        fs.append_parquet(offline / fs.FEATURES_DATASET, features_frame(features))
        column = target(self.settings.target).column
        fs.append_parquet(offline / fs.TARGETS_DATASET, targets_frame(examples, column))
        # last: a symbol resumes from its newest candle, and every row before it is stored
        frame = candles_frame([c for c, _ in kept], [s for _, s in kept], self.trades_id)
        fs.append_parquet(offline / fs.CANDLES_DATASET, frame)
        for candle, _ in kept:
            stored[candle.symbol] = max(candle.end, stored.get(candle.symbol, -math.inf))
        self._features.clear()
        self._examples.clear()
        self._candles.clear()
        self._sources.clear()
        return kept


def _online() -> Any:
    from feast.data_source import PushMode

    return PushMode.ONLINE


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
