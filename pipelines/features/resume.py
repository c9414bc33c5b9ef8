"""Where the feature pipeline resumes from: the offline store's newest candles of each symbol,
and what its commit records say (where to read its outputs back from, each symbol's newest
stored candle). Read once per assignment; nothing here is read from the topics."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING

from rtml import feature_store as fs
from rtml.settings import Settings

from .indicators import HISTORY, Candle
from .processor import FeatureProcessor
from .recovery import CommitRecord, Partition, Replay
from .sink import read_candles


@dataclass
class History:
    """What the offline store holds to resume symbols from, read once per assignment."""

    candles: dict[str, list[Candle]] = field(default_factory=dict)
    # feature rows, for symbols stored before candles were (their close and volume suffice)
    rows: dict[str, list[tuple[float, dict[str, float]]]] = field(default_factory=dict)
    stored: dict[str, float] = field(default_factory=dict)  # symbol -> newest candle's end
    counted: Replay = field(default_factory=Replay)  # the newest trade each stored candle counted

    @classmethod
    def read(
        cls,
        settings: Settings,
        horizon: int,
        trades_id: str | None = None,
        newest: Mapping[str, float] | None = None,
    ) -> History:
        """The newest candles of every symbol; feature rows only for configured symbols that
        have no candles (a store written before candles were), not read at all otherwise.
        With `trades_id`, the trades the stored candles counted (`Replay.count_stored`).

        A live store's newest candles are recent: only recent parts are read. A symbol with
        fewer recent candles than it resumes from (a quiet or halted pair) is read around its
        own newest candle, which `newest` (each symbol's newest stored candle, from the commit
        records) tells; any other lacking symbol is read in windows widening back from
        now. Only configured symbols' rows are kept."""
        history = cls()
        directory = settings.offline_dir / fs.CANDLES_DATASET
        wanted = HISTORY + horizon
        span = wanted * settings.candle_seconds
        now = pd.Timestamp.now(tz="UTC")
        symbols = sorted(settings.symbols)
        since = now - pd.Timedelta(seconds=4 * span)
        frame = fs.read_parquet_dir(directory, since=since, symbols=symbols)
        counts = frame["symbol"].value_counts() if not frame.empty else pd.Series(dtype=int)
        lacking = [s for s in symbols if counts.get(s, 0) < wanted]
        if lacking:  # a replayed past, a gap, a quiet or a new symbol
            # a symbol the records do not name (stored after their last write: a crash
            # between an offline flush and the commit) is looked for back from now
            anchors = {**dict.fromkeys(lacking, now.timestamp()), **(newest or {})}
            frame = pd.concat([frame, *_around_newest(directory, lacking, anchors, span, wanted)])
        if not frame.empty:
            # parts can repeat a candle (a replay after a crash between two writes)
            frame = frame.drop_duplicates(["symbol", "event_timestamp"], keep="last")
            history.counted.count_stored(frame, trades_id)
            order = frame.sort_values("event_timestamp").groupby("symbol", sort=False)
            for symbol, rows in order.tail(wanted).groupby("symbol", sort=False):
                history.candles[str(symbol)] = read_candles(rows)
                history.stored[str(symbol)] = history.candles[str(symbol)][-1].end
        if newest is not None:
            return history  # the store has candles: feature rows are not read for them
        lacking = [s for s in symbols if s not in history.candles]
        if not lacking:
            return history
        frame = fs.read_parquet_dir(settings.offline_dir / fs.FEATURES_DATASET, symbols=lacking)
        if frame.empty:
            return history
        frame = frame.sort_values("event_timestamp").groupby("symbol", sort=False).tail(HISTORY)
        for symbol, rows in frame.groupby("symbol", sort=False):
            values: list[dict[str, float]] = rows.drop(  # type: ignore[assignment]
                columns=["symbol", "event_timestamp", "created"]
            ).to_dict("records")
            stamps = [ts.timestamp() for ts in rows["event_timestamp"]]
            history.rows[str(symbol)] = list(zip(stamps, values, strict=True))
        return history

    def extend(self, candle: Candle, horizon: int) -> None:
        """A candle written after the store was read: the newest to resume from."""
        candles = self.candles.setdefault(candle.symbol, [])
        candles.append(candle)
        del candles[: -(HISTORY + horizon)]
        self.stored[candle.symbol] = max(candle.end, self.stored.get(candle.symbol, -math.inf))

    def resume(self, processor: FeatureProcessor, symbol: str) -> None:
        """Put `symbol` where the store left it (nothing held: a symbol never seen)."""
        processor.forget(symbol)
        if candles := self.candles.pop(symbol, None):
            processor.resume(symbol, candles)
        elif rows := self.rows.pop(symbol, None):
            processor.restore(symbol, rows)


def read_starts(records: list[CommitRecord], ids: Mapping[str, str | None]) -> dict[Partition, int]:
    """Where to read the outputs back from: the earliest start of `records` on each output
    partition; a topic of another incarnation than a record's is read from its start."""
    starts: dict[Partition, int] = {}
    for record in records:
        for topic, at in record.starts.items():
            same = record.ids.get(topic) == ids.get(topic)
            for q, start in at.items():
                begin = start if same else OFFSET_BEGINNING
                key = (topic, q)
                starts[key] = begin if key not in starts else min(starts[key], begin)
    return starts


def newest_stored(records: list[CommitRecord]) -> dict[str, float] | None:
    """Each symbol's newest stored candle by `records`; None if one of them does not say."""
    merged: dict[str, float] = {}
    for record in records:
        if record.newest is None:
            return None
        for symbol, ts in record.newest.items():
            merged[symbol] = max(ts, merged.get(symbol, -math.inf))
    return merged


def _around_newest(
    directory: Path, symbols: list[str], newest: Mapping[str, float], span: float, wanted: int
) -> Iterator[pd.DataFrame]:
    """The candles of `symbols` before each one's newest stored candle, read in widening
    windows (4, 64 and 1,024 times the span they resume from, then all) until each has
    `wanted` or its whole history: parts are skipped by their time statistics."""
    left = {s: newest[s] for s in symbols if s in newest}
    for factor in (4, 64, 1024, None):
        if not left:
            return
        since = None
        if factor is not None:
            since = pd.Timestamp(min(left.values()) - factor * span, unit="s", tz="UTC")
        found = fs.read_parquet_dir(directory, since=since, symbols=sorted(left))
        yield found
        counts = found["symbol"].value_counts() if not found.empty else pd.Series(dtype=int)
        left = {s: t for s, t in left.items() if counts.get(s, 0) < wanted}
