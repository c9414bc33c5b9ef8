"""Raw trades: the record every source produces to the `trades` topic, and its validation.

A trade on the wire is a JSON object::

    {"symbol": "BTC/USD", "trade_id": "42", "price": 64000.5, "size": 0.01,
     "side": "buy", "ts": 1767225600.25}

`ts` is the exchange's event time in epoch seconds (an ISO-8601 string is accepted too).

>>> parse_trade(b'{"symbol":"BTC/USD","trade_id":1,"price":10,"size":2,"side":"buy","ts":5}')
Trade(symbol='BTC/USD', trade_id='1', price=10.0, size=2.0, side='buy', ts=5.0)
>>> parse_trade(b'{"symbol":"BTC/USD","trade_id":1,"price":-1,"size":2,"side":"buy","ts":5}')
Traceback (most recent call last):
...
rtml.pipelines.trades.BadRecord: non_positive: price must be > 0, got -1
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from rtml.errors import RtmlError

SIDES = ("buy", "sell")
FIELDS = ("symbol", "trade_id", "price", "size", "side", "ts")


class BadRecord(RtmlError):
    """A record that cannot be processed; `kind` names the class of problem for counters."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    trade_id: str
    price: float
    size: float
    side: str
    ts: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MAX_RECORD_BYTES = 64 * 1024
"""No rtml record comes near this (a trade is ~100 bytes, an example ~400); a larger value is
refused before it is parsed, so its cost is bounded."""
MAX_INT_DIGITS = 30
"""Integers are bounded before Python builds them: a 400-digit number cannot become a float."""
_INT_BOUND = 10**MAX_INT_DIGITS
_FLOAT_BOUND = float(_INT_BOUND)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRecord("out_of_range", f"an integer of {len(text)} digits")
    return int(text)


def decode_object(raw: bytes | str) -> dict[str, Any]:
    """The JSON object in `raw`, or BadRecord: the one guard every consumer decodes through.

    >>> decode_object(b'{"a": 1}')
    {'a': 1}
    >>> decode_object(b'[' * 5000 + b']' * 5000)
    Traceback (most recent call last):
    ...
    rtml.pipelines.trades.BadRecord: too_deep: JSON nested deeper than the parser allows
    >>> decode_object(b'{"price": 1' + b'0' * 400 + b'}')
    Traceback (most recent call last):
    ...
    rtml.pipelines.trades.BadRecord: out_of_range: an integer of 401 digits
    """
    if len(raw) > MAX_RECORD_BYTES:
        raise BadRecord("too_large", f"{len(raw)} bytes; a record is at most {MAX_RECORD_BYTES}")
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson is strict (no NaN, no integer beyond 64 bits, nesting up to 1024); the standard
        # parser reads NaN and Infinity, so a record carrying them is reported as not finite
        # rather than as not JSON, with integers and depth still bounded
        try:
            record = json.loads(raw, parse_int=_bounded_int)
        except RecursionError:
            raise BadRecord("too_deep", "JSON nested deeper than the parser allows") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRecord("not_json", str(exc)[:200]) from None
    if not isinstance(record, dict):
        raise BadRecord("not_json", f"expected a JSON object, got {type(record).__name__}")
    return record


def number(record: dict[str, Any], field: str, positive: bool) -> float:
    """`record[field]` as a finite float (`positive`: above zero), or BadRecord saying why.

    Magnitudes are bounded as integers are (below 1e30): two finite sizes of 1e308 would sum
    to an infinite candle volume.

    >>> number({"size": 1e308}, "size", positive=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.pipelines.trades.BadRecord: out_of_range: size is beyond 1e+30 in magnitude, got 1e+308
    """
    value = record[field]
    kind = type(value)
    if kind is float and -_FLOAT_BOUND < value < _FLOAT_BOUND and (value > 0 or not positive):
        return value  # the common case, checked cheaply (NaN and infinities fail the bound)
    if kind is int:
        if not -_INT_BOUND < value < _INT_BOUND:  # a source's dict is bounded as text is
            raise BadRecord("out_of_range", f"{field} is an integer beyond {MAX_INT_DIGITS} digits")
        if value > 0 or not positive:
            return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRecord("wrong_type", f"{field} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise BadRecord("wrong_type", f"{field} must be a number, got {value!r:.80}") from None
    if not math.isfinite(number):
        raise BadRecord("not_finite", f"{field} must be finite, got {value!r}")
    if not -_FLOAT_BOUND < number < _FLOAT_BOUND:
        raise BadRecord(
            "out_of_range", f"{field} is beyond {_FLOAT_BOUND:g} in magnitude, got {value!r:.80}"
        )
    if positive and number <= 0:
        raise BadRecord("non_positive", f"{field} must be > 0, got {value!r}")
    return number


def parse_ts(value: Any) -> float:
    """Epoch seconds from epoch seconds or ISO-8601; a time without a zone is UTC, whatever
    the machine's zone.

    >>> parse_ts("2018-01-02"), parse_ts("2018-01-02T00:00:00-05:00"), parse_ts(1514851200)
    (1514851200.0, 1514869200.0, 1514851200.0)
    """
    if isinstance(value, str) and not value.replace(".", "", 1).isdigit():
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
        except ValueError:
            raise BadRecord(
                "wrong_type", f"ts is not ISO-8601 or epoch seconds: {value!r}"
            ) from None
    return number({"ts": value}, "ts", positive=True)


def parse_trade(raw: bytes | str | dict[str, Any]) -> Trade:
    """Validate one trade; raises BadRecord naming what is wrong."""
    record = raw if isinstance(raw, dict) else decode_object(raw)
    if not isinstance(record, dict):
        raise BadRecord("not_json", f"expected a JSON object, got {type(record).__name__}")
    try:
        symbol, side, trade_id = record["symbol"], record["side"], record["trade_id"]
        record["price"], record["size"], record["ts"]
    except KeyError:
        missing = [f for f in FIELDS if f not in record]
        raise BadRecord("missing_field", f"missing {', '.join(missing)}") from None
    if type(symbol) is not str or not symbol:
        raise BadRecord("wrong_type", f"symbol must be a non-empty string, got {symbol!r:.80}")
    if side not in SIDES:
        raise BadRecord("wrong_type", f"side must be one of {SIDES}, got {side!r:.80}")
    if type(trade_id) is not str and type(trade_id) is not int:
        raise BadRecord("wrong_type", f"trade_id must be a string or integer, got {trade_id!r:.80}")
    return Trade(
        symbol=symbol,
        trade_id=str(trade_id),
        price=number(record, "price", positive=True),
        size=number(record, "size", positive=True),
        side=side,
        ts=parse_ts(record["ts"]),
    )


class EventTimes:
    """Each symbol's newest event time, with the `future` rule the candle builder applies to
    trades: a time more than `max_future_s` past both the symbol's newest and the clock is
    refused, so one record dated far ahead cannot become a symbol's "newest" for good.

    >>> times = EventTimes(max_future_s=86_400, clock=lambda: 1_000_000.0)
    >>> times.admit("X", 1_000_000.0 + 3_600)
    >>> times.admit("X", 9.9e9)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.pipelines.trades.BadRecord: future: X@9900000000.0 is more than 86400 s ahead of ...
    """

    def __init__(self, max_future_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_future_s = max_future_s
        self.clock = clock
        self.newest: dict[str, float] = {}

    def admit(self, symbol: str, ts: float) -> None:
        newest = self.newest.get(symbol, -math.inf)
        if ts > newest + self.max_future_s and ts > self.clock() + self.max_future_s:
            raise BadRecord(
                "future",
                f"{symbol}@{ts} is more than {self.max_future_s:g} s ahead of both its newest "
                "event time and the clock (RTML_MAX_FUTURE_S)",
            )
        if ts > newest:
            self.newest[symbol] = ts
