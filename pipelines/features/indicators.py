"""The one feature function: candles in, features out, used live and by backfill alike.

`compute_features` looks only at candles that have closed at or before the one it describes,
so it can run the moment a candle closes, and the same code builds history offline.

>>> cs = [Candle("BTC/USD", 60.0 * i, 60.0 * (i + 1), 100 + i, 101 + i, 99 + i, 100.5 + i,
...              10.0, 100.2 + i, 5) for i in range(WARMUP)]
>>> f = compute_features(cs)
>>> sorted(f) == sorted(FEATURE_NAMES + EXTRA_COLUMNS)
True
>>> round(f["ret_1"], 6)
0.008734
>>> compute_features(cs[1:]) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from .targets import MAX_MOVE, VOL_FLOOR

LOOKBACK = 15
WARMUP = LOOKBACK + 1
"""Closed candles needed before a symbol has features: returns over LOOKBACK need one more."""

HISTORY = 101
"""Closed candles a symbol keeps: the longest volatility window reads 100 returns. Until a
symbol has that many, the long windows read what it has."""

MAX_HORIZON = HISTORY - 1
"""The longest horizon: the naive volatility forecast reads the last H returns."""

FEATURE_NAMES: list[str] = [
    "ret_1",
    "ret_5",
    "ret_15",
    "vol_15",
    "range_pct",
    "volume_z",
    "vwap_dist",
    "rsi_14",
    "rv_h",
    "log_rv_h",
    "log_rv_4h",
    "log_rv_20h",
]
"""What the model sees. `rv_h` is the realised volatility of the last H candles (the naive
volatility forecast); `log_rv_*` are the logs of the realised volatility over H, 4H and 20H
candles (at most 100), each scaled to H candles, so a model of log volatility is linear in them."""

_RETURN = (1.0 / MAX_MOVE - 1.0, MAX_MOVE - 1.0)
_WIDE = (1.0 / MAX_MOVE**2 - 1.0, MAX_MOVE**2 - 1.0)  # within one candle: low and high apart
_VOL = (VOL_FLOOR, math.log(MAX_MOVE) * 10.0)  # sqrt(99) log returns, each within the bound
_LOG_VOL = (math.log(VOL_FLOOR), math.log(_VOL[1]))
_Z = (LOOKBACK - 1) / math.sqrt(LOOKBACK) + 1e-9  # a z-score among n values is within this

FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "ret_1": _RETURN,
    "ret_5": _RETURN,
    "ret_15": _RETURN,
    "vol_15": (0.0, MAX_MOVE),
    "range_pct": (0.0, MAX_MOVE**2),
    "volume_z": (-_Z, _Z),
    "vwap_dist": _WIDE,
    "rsi_14": (-1.0, 1.0),
    "rv_h": _VOL,
    "log_rv_h": _LOG_VOL,
    "log_rv_4h": _LOG_VOL,
    "log_rv_20h": _LOG_VOL,
}
"""Where each feature can be, by its definition (a return is above -1, an RSI within [-1, 1],
a z-score among 15 values within 3.62) and `MAX_MOVE`. A target is a return or a volatility."""
TARGET_BOUNDS = (_RETURN[0], _RETURN[1])


def out_of_bounds(values: Mapping[str, float], target: float | None = None) -> str | None:
    """What in a features or examples record is outside `FEATURE_BOUNDS` (or the target
    outside `TARGET_BOUNDS`), or None. Names without bounds are not checked.

    >>> out_of_bounds({"ret_1": 0.01, "rsi_14": 0.3}, target=-0.02) is None
    True
    >>> out_of_bounds({"ret_1": 1e20})
    'ret_1 1e+20 is outside [-0.99, 99]'
    >>> out_of_bounds({}, target=-1.5)
    'target -1.5 is outside [-0.99, 99]'
    """
    for name, value in values.items():
        bounds = FEATURE_BOUNDS.get(name)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            return f"{name} {value:g} is outside [{bounds[0]:g}, {bounds[1]:g}]"
    if target is not None and not TARGET_BOUNDS[0] <= target <= TARGET_BOUNDS[1]:
        return f"target {target:g} is outside [{TARGET_BOUNDS[0]:g}, {TARGET_BOUNDS[1]:g}]"
    return None


EXTRA_COLUMNS: list[str] = ["close", "volume"]
"""Stored beside the features for monitoring and dashboards; the model does not see them."""


@dataclass(frozen=True, slots=True)
class Candle:
    """An OHLCV candle of one symbol over the event-time window [start, end) in epoch seconds."""

    symbol: str
    start: float
    end: float
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    trades: int


def _ret(candles: Sequence[Candle], lag: int) -> float:
    return candles[-1].close / candles[-1 - lag].close - 1.0


def _std(xs: Sequence[float]) -> float:
    n = len(xs)
    mean = sum(xs) / n
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0


def _rsi(candles: Sequence[Candle], period: int = 14) -> float:
    """Relative strength index over `period` closes, scaled to [-1, 1] (0 is neutral)."""
    gains = losses = 0.0
    for prev, cur in zip(candles[-period - 1 : -1], candles[-period:], strict=True):
        change = cur.close - prev.close
        if change > 0:
            gains += change
        else:
            losses -= change
    if gains + losses == 0:
        return 0.0
    return (gains - losses) / (gains + losses)


def _volatility(squares: Sequence[float], window: int, horizon: int) -> tuple[float, float]:
    """The realised volatility of the last `window` squared log returns (as many as there are,
    if fewer), floored, and the log of it scaled to `horizon` returns."""
    n = min(window, len(squares))
    rv = max(math.sqrt(sum(squares[-n:])), VOL_FLOOR)
    return rv, math.log(max(rv * math.sqrt(horizon / n), VOL_FLOOR))


def compute_features(history: Sequence[Candle], horizon: int = 5) -> dict[str, float] | None:
    """Features of the newest candle in `history` (oldest first), or None before WARMUP candles.

    Only the last HISTORY candles are read, so callers keep a bounded window; `horizon` is H,
    the candles a label looks ahead (the volatility features' windows are H, 4H and 20H).
    """
    if len(history) < WARMUP:
        return None
    kept = list(history)[-HISTORY:]
    squares = [math.log(b.close / a.close) ** 2 for a, b in pairwise(kept)]
    rv_h, log_rv_h = _volatility(squares, horizon, horizon)
    window = kept[-WARMUP:]
    last = window[-1]
    one_step = [cur.close / prev.close - 1.0 for prev, cur in pairwise(window)]
    volumes = [c.volume for c in window[1:]]
    vol_std = _std(volumes)
    return {
        "ret_1": _ret(window, 1),
        "ret_5": _ret(window, 5),
        "ret_15": _ret(window, 15),
        "vol_15": _std(one_step),
        "range_pct": (last.high - last.low) / last.close,
        "volume_z": (last.volume - sum(volumes) / len(volumes)) / vol_std if vol_std > 0 else 0.0,
        "vwap_dist": last.close / last.vwap - 1.0 if last.vwap > 0 else 0.0,
        "rsi_14": _rsi(window, 14),
        "rv_h": rv_h,
        "log_rv_h": log_rv_h,
        "log_rv_4h": _volatility(squares, 4 * horizon, horizon)[1],
        "log_rv_20h": _volatility(squares, 20 * horizon, horizon)[1],
        "close": last.close,
        "volume": last.volume,
    }


def model_inputs(values: Mapping[str, float]) -> dict[str, float]:
    """What the model reads of a feature row: FEATURE_NAMES only, never the extra columns.

    Training (examples, the offline store's feature service) and serving (HTTP rows, the
    feature service's online read, streaming records parsed for FEATURE_NAMES) all read
    FEATURE_NAMES and nothing else, so they agree on the model's inputs.

    >>> model_inputs({"ret_1": 0.01, "close": 101.0})
    {'ret_1': 0.01}
    """
    return {n: values[n] for n in FEATURE_NAMES if n in values}
