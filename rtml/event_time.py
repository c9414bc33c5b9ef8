"""Event-time sanity: the one `future` rule every consumer applies to its series.

A record dated far ahead would otherwise become its series' newest time for good: one trade
from the year 2286 would make every later trade of its symbol `late`, one example from then
every later example "seen before". `future_reason` says why a time is `future`; `FutureRule`
applies it with its bounds and its runs of records that agree on a jump (`Jumps`), for the
candle builder (trades), the trainer (labels) and the predictors (`EventTimes`, rows).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rtml.records import BadRecord

# a symbol's series is settled once it has this many event times (closed candles, learned
# labels, served rows); before that, a jump far ahead restarts it instead of being refused, so
# one stale record at a series' very start (a 1970 row atop a file) cannot hold it back. As
# many records in a row that agree on a jump are a real gap in the data, not one bad record.
SETTLED = 3


class Jumps:
    """Records in a row, per series, that jump further ahead than the `future` rule allows:
    past a settled series in replay time, or past the clock for a series with no newest time
    yet.

    One such record is refused; `SETTLED` in a row, each within `bound` of the one before,
    are the market itself moving on (a gap in a vendor's file, a halted stock, a simulator
    ahead of the clock) and the last is admitted, so a real gap never refuses a symbol's every
    later record.

    >>> jumps = Jumps()
    >>> [jumps.confirmed("X", ts, bound=10) for ts in (100, 103, 106)]
    [False, False, True]
    >>> [jumps.confirmed("X", ts, bound=10) for ts in (100, 500, 503)]
    [False, False, False]
    """

    def __init__(self) -> None:
        self.pending: dict[str, tuple[int, float]] = {}
        """Per key, the run so far: (records, the last one's value). Empty almost always, so
        a caller on a hot path checks it before calling `clear`."""

    def confirmed(self, key: str, value: float, bound: float) -> bool:
        """Whether `value` (a time, or a log price) is the `SETTLED`-th in a row of `key`'s,
        each within `bound` of the one before."""
        count, last = self.pending.get(key, (0, -math.inf))
        count = count + 1 if abs(value - last) <= bound else 1
        if count >= SETTLED:
            del self.pending[key]
            return True
        self.pending[key] = (count, value)
        return False

    def clear(self, key: str) -> None:
        """A record of `key` was admitted in its stride: the run is broken."""
        self.pending.pop(key, None)


def future_reason(
    ts: float,
    newest: float,
    now: float,
    bound: float,
    settled: bool,
    jumps: Jumps | None = None,
    key: str = "",
    silence: float | None = None,
    young_confirms: bool = True,
) -> str | None:
    """Why `ts` is `future` for a series whose newest event time is `newest`, or None.

    The one rule every consumer applies (`bound` is RTML_MAX_FUTURE_S, `silence`
    RTML_MAX_SILENCE_S, `bound` too by default):

    - more than `bound` ahead of both the series' newest time and the clock: `future` (the
      year 2286; a trade an hour ahead of a live market, with a bound of minutes). A replay
      or a simulator running ahead of the clock steps forward from its newest, within it; a
      young series (no newest yet) takes the `SETTLED`-th record in a row that agrees, unless
      `young_confirms` is False (a consumer that reads its series from the start, as the
      candle builder reads `trades`, never needs it, and three agreeing hostile records
      could otherwise carry a brand-new symbol's clock days ahead);
    - more than `silence` ahead of a settled series, and more than `silence` away from the
      clock: `future` in replay time (a 2020 row inside a 2001 replay), unless `jumps`
      confirms it (the `SETTLED`-th record in a row to jump together: a real gap in the data);
    - otherwise admitted: a live feed back after a long silence is near the clock, and a
      young series restarts.

    >>> day = 86_400.0
    >>> future_reason(10 * day, newest=9.5 * day, now=1e9, bound=day, settled=True) is None
    True
    >>> future_reason(1e9 + 2 * day, newest=-math.inf, now=1e9, bound=day, settled=False)
    'more than 86400 s ahead of both its newest time and the clock (RTML_MAX_FUTURE_S)'
    >>> future_reason(1e9 + 3_600, newest=1e9, now=1e9, bound=300, settled=True, silence=day)
    'more than 300 s ahead of both its newest time and the clock (RTML_MAX_FUTURE_S)'
    >>> future_reason(400 * day, newest=9 * day, now=1e9, bound=day, settled=True)
    'more than 86400 s ahead of its newest time 777600 (RTML_MAX_SILENCE_S)'
    >>> future_reason(1e9 - 60, newest=9 * day, now=1e9, bound=day, settled=True) is None
    True
    >>> jumps = Jumps()
    >>> [future_reason(1e9 + 11 * day + i, -math.inf, 1e9, day, False, jumps, "X") is None
    ...  for i in range(3)]
    [False, False, True]
    >>> [future_reason(1e9 + 11 * day + i, -math.inf, 1e9, day, False, jumps, "X",
    ...                young_confirms=False) is None for i in range(3)]
    [False, False, False]
    """
    silence = bound if silence is None else silence
    if ts > max(newest, now) + bound:
        # a young series (a consumer started while a simulator runs ahead of the clock) is
        # admitted at the `SETTLED`-th record in a row that agrees; a settled one never
        if settled or jumps is None or not young_confirms or not jumps.confirmed(key, ts, bound):
            ahead = f"more than {bound:g} s ahead of both its newest time and the clock"
            return f"{ahead} (RTML_MAX_FUTURE_S)"
        return None
    if (
        settled
        and newest + silence < ts < now - silence
        and not (jumps is not None and jumps.confirmed(key, ts, silence))
    ):
        return f"more than {silence:g} s ahead of its newest time {newest:.0f} (RTML_MAX_SILENCE_S)"
    return None


class FutureRule:
    """`future_reason` with its two bounds and its runs of jumps, as each consumer applies it
    to its series: the candle builder to each symbol's trades, the trainer to the labels it
    learns, the predictors' `EventTimes` to the rows they read.

    >>> rule = FutureRule(bound=86_400, clock=lambda: 1e9)
    >>> rule.jumped("X", 1e9 + 60, newest=1e9, settled=True)
    False
    >>> rule.jumped("X", 9.9e9, newest=1e9, settled=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.records.BadRecord: future: X@9900000000.0 is more than 86400 s ahead of both its ...
    """

    def __init__(
        self,
        bound: float,
        silence: float | None = None,
        clock: Callable[[], float] = time.time,
        young_confirms: bool = True,
    ) -> None:
        self.bound = bound
        self.young_confirms = young_confirms
        self.silence = bound if silence is None else silence
        self.least = min(self.bound, self.silence)  # within this of its newest: no question
        self.clock = clock
        self.jumps = Jumps()

    def jumped(self, key: str, ts: float, newest: float, settled: bool, name: str = "") -> bool:
        """False for a time in its series' stride; True for a jump that is admitted (a young
        series restarting, a live feed back near the clock, a real gap confirmed); raises
        BadRecord `future` (naming `name`, or `key`) for the rest."""
        if ts <= newest + self.least:
            if self.jumps.pending:
                self.jumps.clear(key)
            return False
        why = future_reason(
            ts,
            newest,
            self.clock(),
            self.bound,
            settled,
            self.jumps,
            key,
            self.silence,
            self.young_confirms,
        )
        if why is not None:
            raise BadRecord("future", f"{name or key}@{ts} is {why}")
        return True


class EventTimes:
    """Each symbol's newest event time, with the `future` rule (`future_reason`) the candle
    builder applies to trades and the trainer to labels, so one record dated far ahead cannot
    become a symbol's "newest" for good.

    >>> times = EventTimes(max_future_s=86_400, clock=lambda: 1_000_000.0)
    >>> times.admit("X", 1_000_000.0 + 3_600)
    >>> times.admit("X", 9.9e9)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.records.BadRecord: future: X@9900000000.0 is more than 86400 s ahead of both its ...
    """

    def __init__(
        self,
        max_future_s: float,
        clock: Callable[[], float] = time.time,
        max_silence_s: float | None = None,
    ) -> None:
        self.rule = FutureRule(max_future_s, max_silence_s, clock)
        self.newest: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def admit(self, symbol: str, ts: float) -> None:
        newest = self.newest.get(symbol, -math.inf)
        if self.rule.jumped(symbol, ts, newest, self._count.get(symbol, 0) >= SETTLED):
            self._count[symbol] = 0  # a young series restarts, or a live one resumes
        if ts > newest:
            self.newest[symbol] = ts
            self._count[symbol] = min(self._count.get(symbol, 0) + 1, SETTLED)
