"""Event-time tumbling-window OHLCV candles per symbol, closed by a watermark.

Each symbol has its own watermark: the newest event time seen of that symbol minus the allowed
lateness. Topics are keyed by symbol, so a symbol's trades arrive in order while partitions
interleave freely; one shared watermark would call a slow partition's trades late. A window
[start, end) closes once its symbol's watermark reaches `end`; a trade for a window that has
closed is late, and a trade id seen before in its window is a duplicate: both raise BadRecord
so the caller can dead-letter them. A trade sent twice carries its own time both times, so it
is refused either way, and a symbol keeps trade ids only for its open windows: memory bounded
by time (the allowed lateness and a candle), not by a count of trades.
A gap between two candles of a symbol (no trades in a window) is filled with flat candles at
the previous close and zero volume, so "5 candles ago" always means 5 windows ago; with the
`skip` gap policy (markets with sessions) it is left empty. A silence longer than
RTML_MAX_SILENCE_S is not bridged: the series restarts after it, and no label spans it.

>>> b = CandleBuilder(seconds=60, allowed_lateness=0)
>>> b.add(Trade("X", "1", 10.0, 1.0, "buy", 5.0))
[]
>>> b.add(Trade("X", "2", 12.0, 1.0, "sell", 30.0))
[]
>>> [(c.start, c.open, c.high, c.close, c.volume, c.trades) for c in b.add(
...     Trade("X", "3", 11.0, 2.0, "buy", 61.0))]
[(0.0, 10.0, 12.0, 12.0, 2.0, 2)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rtml.event_time import SETTLED, FutureRule
from rtml.records import BadRecord, Trade

from .indicators import MAX_MOVE, Candle

GAP_POLICIES = ("flat", "skip")
"""What a window without trades becomes: `flat`, a candle at the previous close with no volume
(markets that trade around the clock, so "5 candles ago" is 5 windows ago); `skip`, nothing
(markets with sessions: weekends and holidays produce no candle, and H counts candles that
exist)."""


@dataclass(slots=True)
class _Window:
    start: float
    open: float
    high: float
    low: float
    close: float
    first_ts: float
    last_ts: float
    volume: float = 0.0
    notional: float = 0.0
    trades: int = 0
    # The first (partition, offset) of each partition that fed this window: replaying from
    # there rebuilds the window after a restart.
    first_positions: dict[int, int] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    """The ids of the window's trades: a trade sent twice is refused while its window is
    open, and is `late` once it closed, so a symbol holds ids for its open windows only."""


_LEAST_MOVE = 1.0 / MAX_MOVE


class _Series:
    """What the builder holds for one symbol, in one place: a trade looks it up once."""

    __slots__ = (
        "arrived",
        "closed_until",
        "earliest_end",
        "last_close",
        "restarted_at",
        "run",
        "watermark",
        "windows",
    )

    def __init__(self) -> None:
        self.watermark = -math.inf
        self.earliest_end = math.inf  # the end of the oldest open window: most trades close none
        self.windows: dict[float, _Window] = {}
        self.closed_until = -math.inf
        self.last_close: float | None = None
        self.run = 0  # candles closed since the series (re)started, capped at SETTLED
        self.arrived: float | None = None  # clock time of the newest trade
        self.restarted_at = -1  # the window (start / seconds) a declared reset opened


_UNSEEN = _Series()
"""What a symbol not yet held reads as; never changed (a refused trade holds nothing)."""


class CandleBuilder:
    """Builds candles of every symbol from trades in any order within the allowed lateness."""

    def __init__(
        self,
        seconds: int,
        allowed_lateness: float,
        max_future_s: float = math.inf,
        clock: Callable[[], float] = time.time,
        gap_policy: str = "flat",
        max_silence_s: float | None = None,
        price_resets: Mapping[str, float] | None = None,
    ):
        if gap_policy not in GAP_POLICIES:
            raise ValueError(f"gap policy {gap_policy!r} is not one of {GAP_POLICIES}")
        self.gap_policy = gap_policy
        self.seconds = seconds
        self.allowed_lateness = allowed_lateness
        # how far a symbol's event time may step ahead of its newest and the clock
        # (`event_time.future_reason`), and the longest silence a series bridges (by default the
        # same): a longer gap is not filled with flat candles (one stale trade atop a file
        # would otherwise invent decades of them) and the series restarts after it. Never
        # under two windows: one step spans that much.
        self.max_future_s = max_future_s
        self.max_future_bound_s = max(max_future_s, 2.0 * seconds)
        silence = max_future_s if max_silence_s is None else max_silence_s
        self.max_silence_bound_s = max(silence, 2.0 * seconds)
        # it reads `trades` from the start of its history and resumes restored symbols as
        # settled, so a young symbol never needs a run of records ahead of the clock confirmed
        self._future = FutureRule(
            self.max_future_bound_s, self.max_silence_bound_s, clock, young_confirms=False
        )
        self._series: dict[str, _Series] = {}
        # a redenomination or split an operator declared (RTML_PRICE_RESETS): the symbol's first
        # trade from that event time on may be at any price, and only that one
        self.price_resets = dict(price_resets or {})

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock, the `future` rule's and idle closes' (tests set their own)."""
        return self._future.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._future.clock = clock

    def _of(self, symbol: str) -> _Series:
        series = self._series.get(symbol)
        if series is None:
            series = self._series[symbol] = _Series()
        return series

    def add(self, trade: Trade, position: tuple[int, int] | None = None) -> list[Candle]:
        """Add one trade; returns the candles that closed because of it, oldest first."""
        symbol, ts, price, seconds = trade.symbol, trade.ts, trade.price, self.seconds
        start = float(math.floor(ts / seconds) * seconds)
        s = self._series.get(symbol) or _UNSEEN  # held only once a trade of it is taken
        newest = s.watermark if s.watermark > s.closed_until else s.closed_until
        future = self._future
        if ts > newest + future.least or future.jumps.pending:
            future.jumped(symbol, ts, newest, s.run >= SETTLED)
        if start + seconds <= s.closed_until:
            raise BadRecord(
                "late",
                f"{symbol}@{ts}: its window [{start}, {start + seconds}) closed "
                f"(watermark {s.watermark})",
            )
        last = s.last_close
        if last is not None and not last * _LEAST_MOVE <= price <= last * MAX_MOVE:
            # however many come in a row: a fat finger repeated is no market
            reset = self.price_resets.get(symbol)
            if reset is None or not s.watermark < reset <= ts:
                raise BadRecord(
                    "out_of_range",
                    f"{symbol}@{ts}: price {price:g} is more than {MAX_MOVE:g}-fold from its "
                    f"last close {last:g}; a redenomination or split is declared in "
                    "RTML_PRICE_RESETS",
                )
            return self._reset(symbol, s, trade, reset, position)
        w = s.windows.get(start)
        if w is not None and trade.trade_id in w.ids:
            raise BadRecord("duplicate", f"{symbol} trade_id {trade.trade_id} seen before")
        if s is _UNSEEN:
            s = self._series[symbol] = _Series()
        s.arrived = future.clock()
        if w is None:
            w = s.windows[start] = _Window(start, price, price, price, price, ts, ts)
            s.earliest_end = min(s.earliest_end, start + seconds)
        elif price > w.high:
            w.high = price
        elif price < w.low:
            w.low = price
        if ts >= w.last_ts:
            w.close, w.last_ts = price, ts
        elif ts < w.first_ts:  # a trade that arrives after a newer one can be the open
            w.open, w.first_ts = price, ts
        w.volume += trade.size
        w.notional += trade.size * price
        w.trades += 1
        w.ids.add(trade.trade_id)
        if position is not None:
            partition, offset = position
            w.first_positions.setdefault(partition, offset)
        mark = ts - self.allowed_lateness
        s.watermark = max(s.watermark, mark)
        if s.watermark < s.earliest_end:
            return []
        return self._close_ready(symbol, s)

    def _reset(
        self, symbol: str, s: _Series, trade: Trade, reset: float, position: tuple[int, int] | None
    ) -> list[Candle]:
        """A declared redenomination: the old level's windows close, the series restarts at
        the new level (no flat candle bridges the two), and `trade` opens it."""
        s.watermark = max(s.watermark, reset)
        closed = self._close_ready(symbol, s)
        s.last_close, s.run, s.restarted_at = trade.price, 0, math.floor(trade.ts / self.seconds)
        return closed + self.add(trade, position)

    def watermark(self, symbol: str) -> float:
        series = self._series.get(symbol)
        return -math.inf if series is None else series.watermark

    def _close_ready(self, symbol: str, s: _Series) -> list[Candle]:
        windows, mark = s.windows, s.watermark
        closed: list[Candle] = []
        for start in sorted(start for start in windows if start + self.seconds <= mark):
            closed.extend(self._close(symbol, s, windows.pop(start)))
        s.earliest_end = min(windows, default=math.inf) + self.seconds
        return closed

    def close_idle(self, idle_s: float) -> list[Candle]:
        """Close the open windows of symbols with no trade for `idle_s` of clock time.

        A symbol that stops trading (a halt, a delisting, a session's end) would otherwise keep
        its last window open, and the commit behind it, forever.
        """
        now, closed = self.clock(), []
        for symbol, s in self._series.items():
            arrived = now if s.arrived is None else s.arrived
            if s.windows and now - arrived >= idle_s:
                s.watermark = max(s.watermark, max(s.windows) + self.seconds)
                closed.extend(self._close_ready(symbol, s))
        closed.sort(key=lambda c: (c.end, c.symbol))
        return closed

    def advance(self, watermark: float) -> list[Candle]:
        """Move every symbol's watermark to at least `watermark`; returns what that closes."""
        closed: list[Candle] = []
        for symbol, s in self._series.items():
            if s.windows:
                s.watermark = max(s.watermark, watermark)
                closed.extend(self._close_ready(symbol, s))
        closed.sort(key=lambda c: (c.end, c.symbol))
        return closed

    def _close(self, symbol: str, s: _Series, w: _Window) -> list[Candle]:
        out = []
        prev_end: float | None = s.closed_until if s.closed_until > -math.inf else None
        prev_close = s.last_close
        if prev_end is not None and w.start - prev_end > self.max_silence_bound_s:
            prev_end = None  # too long a silence to bridge: the series restarts
            s.run = 0
        elif w.start == s.restarted_at * self.seconds:
            prev_end = None  # a declared redenomination: a new level, bridged by nothing
        if prev_end is not None and prev_close is not None and self.gap_policy == "flat":
            for gap_start in range(int(prev_end), int(w.start), self.seconds):
                out.append(
                    Candle(
                        symbol,
                        float(gap_start),
                        float(gap_start + self.seconds),
                        prev_close,
                        prev_close,
                        prev_close,
                        prev_close,
                        0.0,
                        prev_close,
                        0,
                    )
                )
        out.append(
            Candle(
                symbol,
                w.start,
                w.start + self.seconds,
                w.open,
                w.high,
                w.low,
                w.close,
                w.volume,
                w.notional / w.volume if w.volume > 0 else w.close,  # no volume: no VWAP
                w.trades,
            )
        )
        s.closed_until = w.start + self.seconds
        s.last_close = w.close
        s.run = min(s.run + 1, SETTLED)
        return out

    def open_positions(self) -> dict[int, int]:
        """Per partition, the lowest offset feeding a window that is still open."""
        lowest: dict[int, int] = {}
        for s in self._series.values():
            for w in s.windows.values():
                for partition, offset in w.first_positions.items():
                    lowest[partition] = min(offset, lowest.get(partition, offset))
        return lowest

    def forget_positions(self) -> None:
        """The input topic was lost with its offsets: open windows keep their trades only."""
        for s in self._series.values():
            for w in s.windows.values():
                w.first_positions.clear()

    def forget(self, symbol: str) -> None:
        """Drop everything held for `symbol`: its partition went to another replica."""
        self._series.pop(symbol, None)

    def take(self, symbol: str) -> _Series | None:
        """Everything held for `symbol`, no longer held (see `FeatureProcessor.park`)."""
        return self._series.pop(symbol, None)

    def put(self, symbol: str, series: _Series) -> None:
        """Hold `series` for `symbol` again; its open windows keep their trades, not the
        positions of a topic that is gone."""
        for w in series.windows.values():
            w.first_positions.clear()
        self._series[symbol] = series

    def restore(self, symbol: str, closed_until: float, last_close: float) -> None:
        """Resume a symbol after a restart: windows before `closed_until` are closed."""
        s = self._of(symbol)
        s.closed_until = closed_until
        s.last_close = last_close
        s.run = SETTLED
