"""Event-time tumbling-window OHLCV candles per symbol, closed by a watermark.

Each symbol has its own watermark: the newest event time seen of that symbol minus the allowed
lateness. Topics are keyed by symbol, so a symbol's trades arrive in order while partitions
interleave freely; one shared watermark would call a slow partition's trades late. A window
[start, end) closes once its symbol's watermark reaches `end`; a trade for a window that has
closed is late, and a trade id seen before is a duplicate: both raise BadRecord so the caller
can dead-letter them.
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rtml.event_time import SETTLED, FutureRule, Jumps
from rtml.pipelines.features import MAX_MOVE, Candle
from rtml.records import BadRecord, Trade

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
    last_ts: float
    volume: float = 0.0
    notional: float = 0.0
    trades: int = 0
    # The first (partition, offset) of each partition that fed this window: replaying from
    # there rebuilds the window after a restart.
    first_positions: dict[int, int] = field(default_factory=dict)


_LOG_MOVE = math.log(MAX_MOVE)
_LEAST_MOVE = 1.0 / MAX_MOVE


class CandleBuilder:
    """Builds candles of every symbol from trades in any order within the allowed lateness."""

    def __init__(
        self,
        seconds: int,
        allowed_lateness: float,
        dedup_capacity: int = 50_000,
        max_future_s: float = math.inf,
        clock: Callable[[], float] = time.time,
        gap_policy: str = "flat",
        max_silence_s: float | None = None,
    ):
        if gap_policy not in GAP_POLICIES:
            raise ValueError(f"gap policy {gap_policy!r} is not one of {GAP_POLICIES}")
        self.gap_policy = gap_policy
        self.seconds = seconds
        self.allowed_lateness = allowed_lateness
        self.dedup_capacity = dedup_capacity
        # how far a symbol's event time may step ahead of its newest and the clock
        # (`event_time.future_reason`), and the longest silence a series bridges (by default the
        # same): a longer gap is not filled with flat candles (one stale trade atop a file
        # would otherwise invent decades of them) and the series restarts after it. Never
        # under two windows: one step spans that much.
        self.max_future_s = max_future_s
        self.max_step_s = max(max_future_s, 2.0 * seconds)
        silence = max_future_s if max_silence_s is None else max_silence_s
        self.max_gap_s = max(silence, 2.0 * seconds)
        # it reads `trades` from the start of its history and resumes restored symbols as
        # settled, so a young symbol never needs a run of records ahead of the clock confirmed
        self._future = FutureRule(self.max_step_s, self.max_gap_s, clock, young_confirms=False)
        self._watermark: dict[str, float] = {}
        self._earliest: dict[str, float] = {}
        self._open: dict[str, dict[float, _Window]] = {}
        self._closed_until: dict[str, float] = {}
        self._last_close: dict[str, float] = {}
        self._seen: dict[str, tuple[set[str], deque[str]]] = {}
        self._run: dict[str, int] = {}  # candles closed since the series (re)started, capped
        self._moves = Jumps()  # trades in a row priced far from their symbol's last close
        self._arrived: dict[str, float] = {}  # clock time of each symbol's newest trade

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock, the `future` rule's and idle closes' (tests set their own)."""
        return self._future.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._future.clock = clock

    def add(self, trade: Trade, position: tuple[int, int] | None = None) -> list[Candle]:
        """Add one trade; returns the candles that closed because of it, oldest first."""
        start = float(math.floor(trade.ts / self.seconds) * self.seconds)
        closed_until = self._closed_until.get(trade.symbol, -math.inf)
        mark = self._watermark.get(trade.symbol, -math.inf)
        newest = mark if mark > closed_until else closed_until
        self._future.jumped(
            trade.symbol, trade.ts, newest, self._run.get(trade.symbol, 0) >= SETTLED
        )
        if start + self.seconds <= closed_until:
            raise BadRecord(
                "late",
                f"{trade.symbol}@{trade.ts}: its window [{start}, {start + self.seconds}) closed "
                f"(watermark {self.watermark(trade.symbol)})",
            )
        last = self._last_close.get(trade.symbol)
        if last is not None and not last * _LEAST_MOVE <= trade.price <= last * MAX_MOVE:
            # the third trade in a row at the new level is the market (a redenomination)
            if not self._moves.confirmed(trade.symbol, math.log(trade.price), _LOG_MOVE):
                raise BadRecord(
                    "out_of_range",
                    f"{trade.symbol}@{trade.ts}: price {trade.price:g} is more than "
                    f"{MAX_MOVE:g}-fold from its last close {last:g}",
                )
        elif self._moves.pending:
            self._moves.clear(trade.symbol)
        self._remember(trade)
        self._arrived[trade.symbol] = self.clock()
        windows = self._open.setdefault(trade.symbol, {})
        w = windows.get(start)
        if w is None:
            w = windows[start] = _Window(
                start, trade.price, trade.price, trade.price, trade.price, trade.ts
            )
        w.high = max(w.high, trade.price)
        w.low = min(w.low, trade.price)
        if trade.ts >= w.last_ts:
            w.close, w.last_ts = trade.price, trade.ts
        w.volume += trade.size
        w.notional += trade.size * trade.price
        w.trades += 1
        if position is not None:
            partition, offset = position
            w.first_positions.setdefault(partition, offset)
        mark = max(self.watermark(trade.symbol), trade.ts - self.allowed_lateness)
        self._watermark[trade.symbol] = mark
        if mark < self._earliest_end(trade.symbol, start):
            return []
        return self._close_ready(trade.symbol)

    def _earliest_end(self, symbol: str, start: float) -> float:
        """The end of `symbol`'s oldest open window, cached: most trades close nothing."""
        cached = self._earliest.get(symbol, math.inf)
        if start + self.seconds < cached:
            cached = self._earliest[symbol] = start + self.seconds
        return cached

    def watermark(self, symbol: str) -> float:
        return self._watermark.get(symbol, -math.inf)

    def _close_ready(self, symbol: str) -> list[Candle]:
        windows = self._open.get(symbol, {})
        mark = self.watermark(symbol)
        closed: list[Candle] = []
        for start in sorted(s for s in windows if s + self.seconds <= mark):
            closed.extend(self._close(symbol, windows.pop(start)))
        self._earliest[symbol] = min(windows, default=math.inf) + self.seconds
        return closed

    def _remember(self, trade: Trade) -> None:
        ids, order = self._seen.setdefault(trade.symbol, (set(), deque()))
        if trade.trade_id in ids:
            raise BadRecord("duplicate", f"{trade.symbol} trade_id {trade.trade_id} seen before")
        ids.add(trade.trade_id)
        order.append(trade.trade_id)
        if len(order) > self.dedup_capacity:
            ids.discard(order.popleft())

    def close_idle(self, idle_s: float) -> list[Candle]:
        """Close the open windows of symbols with no trade for `idle_s` of clock time.

        A symbol that stops trading (a halt, a delisting, a session's end) would otherwise keep
        its last window open, and the commit behind it, forever.
        """
        now, closed = self.clock(), []
        for symbol, windows in self._open.items():
            if windows and now - self._arrived.get(symbol, now) >= idle_s:
                end = max(windows) + self.seconds
                self._watermark[symbol] = max(self.watermark(symbol), end)
                closed.extend(self._close_ready(symbol))
        closed.sort(key=lambda c: (c.end, c.symbol))
        return closed

    def advance(self, watermark: float) -> list[Candle]:
        """Move every symbol's watermark to at least `watermark`; returns what that closes."""
        closed: list[Candle] = []
        for symbol in self._open:
            self._watermark[symbol] = max(self.watermark(symbol), watermark)
            closed.extend(self._close_ready(symbol))
        closed.sort(key=lambda c: (c.end, c.symbol))
        return closed

    def _close(self, symbol: str, w: _Window) -> list[Candle]:
        out = []
        prev_end = self._closed_until.get(symbol)
        prev_close = self._last_close.get(symbol)
        if prev_end is not None and w.start - prev_end > self.max_gap_s:
            prev_end = None  # too long a silence to bridge: the series restarts
            self._run[symbol] = 0
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
        self._closed_until[symbol] = w.start + self.seconds
        self._last_close[symbol] = w.close
        self._run[symbol] = min(self._run.get(symbol, 0) + 1, SETTLED)
        return out

    def open_positions(self) -> dict[int, int]:
        """Per partition, the lowest offset feeding a window that is still open."""
        lowest: dict[int, int] = {}
        for windows in self._open.values():
            for w in windows.values():
                for partition, offset in w.first_positions.items():
                    lowest[partition] = min(offset, lowest.get(partition, offset))
        return lowest

    def forget_positions(self) -> None:
        """The input topic was lost with its offsets: open windows keep their trades only."""
        for windows in self._open.values():
            for w in windows.values():
                w.first_positions.clear()

    def forget(self, symbol: str) -> None:
        """Drop everything held for `symbol`: its partition went to another replica."""
        for held in (
            self._watermark,
            self._earliest,
            self._open,
            self._closed_until,
            self._last_close,
            self._seen,
            self._arrived,
            self._run,
        ):
            held.pop(symbol, None)

    def restore(self, symbol: str, closed_until: float, last_close: float) -> None:
        """Resume a symbol after a restart: windows before `closed_until` are closed."""
        self._closed_until[symbol] = closed_until
        self._last_close[symbol] = last_close
        self._run[symbol] = SETTLED
