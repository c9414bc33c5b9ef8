"""A candle file's sessions: its candle length, and whether its market closes.

A market with weekly closes (FX, stocks, futures) shows a hole of 36 hours or more in most of
its weeks, and one with trading hours a hole of some length in most of its days: both are
replayed with the `skip` gap policy, so no candle is invented while the market is closed.
Any other file is `flat`, unless its preset declares its vendor's sessions. The share of
holes decides nothing: 52 weekends in 6,224 hourly steps are under 1%, and still weekends.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from rtml.records import FIRST_TIME, LAST_TIME

from .files import AS_IS, Reading, read_table


@dataclass(frozen=True)
class CandleProfile:
    """What a candle file says about itself: its candle length and whether its market closes."""

    seconds: int  # the most common step between a symbol's consecutive candles
    gaps: float  # the share of steps longer than that
    gap_policy: Literal["flat", "skip"]
    reason: str


WEEKEND = 36 * 3600
"""A hole this long that ends on a Sunday or a Monday (UTC) is a weekly close."""


def candle_profile(path: Path, reading: Reading = AS_IS) -> CandleProfile | None:
    """The candle length and sessions of a candle file; None for a file of trades."""
    table = read_table(path, reading, say=lambda _: None)
    if table.kind != "candles":
        return None
    return profile_of(table.frame, table.preset.gap_policy)


def profile_of(frame: pd.DataFrame, declared: str | None = None) -> CandleProfile | None:
    """`candle_profile` of a table's frame.

    >>> days = pd.Series(pd.bdate_range("2024-01-01", periods=15)).astype("int64") / 1e9
    >>> found = profile_of(pd.DataFrame({"symbol": "X", "_start": days}))
    >>> found.seconds, found.gap_policy, found.reason
    (86400, 'skip', 'a hole of 36 h or more in 2 of 2 weeks')
    """
    steps: list[float] = []
    holes: list[tuple[float, float]] = []
    days: set[float] = set()
    weeks: set[float] = set()
    for _, rows in frame.groupby("symbol", sort=False):
        stamps = np.unique(rows["_start"].to_numpy())
        stamps = stamps[(stamps >= FIRST_TIME) & (stamps < LAST_TIME)]
        steps.extend(np.diff(stamps))
        days.update((stamps // 86_400).tolist())
        weeks.update(((stamps // 86_400 + 3) // 7).tolist())  # weeks from Monday
        holes.extend((a, b) for a, b in itertools.pairwise(stamps))
    if not steps:
        return None
    step = int(pd.Series(np.round(steps)).mode().iloc[0])
    if step <= 0:
        return None
    long = [(a, b) for a, b in holes if b - a > step * 1.5]
    gaps = len(long) / len(steps)
    weekly = {(b // 86_400 + 3) // 7 for a, b in long if b - a >= WEEKEND}
    closed = max(3 * step, 1800)  # a trading day's close, not a quiet minute
    daily = {b // 86_400 for a, b in long if closed <= b - a < WEEKEND}
    full_weeks = max(len(weeks) - 1, 0)
    if full_weeks and len(weekly) >= 0.5 * full_weeks:
        reason = f"a hole of 36 h or more in {len(weekly)} of {full_weeks} weeks"
        return CandleProfile(step, gaps, "skip", reason)
    if step < 86_400 and len(days) > 2 and len(daily) >= 0.5 * (len(days) - 1):
        return CandleProfile(step, gaps, "skip", f"a hole in {len(daily)} of {len(days)} days")
    if declared is not None:
        return CandleProfile(step, gaps, declared, f"its preset declares {declared}")  # type: ignore[arg-type]
    return CandleProfile(step, gaps, "flat", f"no weekly or daily closes ({gaps:.1%} of steps)")
