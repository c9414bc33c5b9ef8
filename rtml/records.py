"""The wire records: what rtml's topics carry, each parsed and validated one way.

| topic | record | parser |
| --- | --- | --- |
| `trades` | `Trade` | `parse_trade` |
| `features` | `FeatureRow` | `parse_features` |
| `examples` | `Example` | `parse_example` |
| `predictions` | `Prediction` | `parse_prediction` |

Every parser decodes through `decode_object` (size, depth and integer length bounded before
Python builds anything), reads required fields through one check (`missing_field`), numbers
through `number` (`wrong_type`, `not_finite`, `out_of_range`, `non_positive`) and symbols
through `symbol` (`wrong_type`). A record that fails raises `BadRecord`, whose `kind` is the
class its dead letter and its counter carry. Records are slotted dataclasses, not frozen ones:
building a frozen one costs about 0.7 µs more, once per record on the hot paths.

A trade on the wire is a JSON object::

    {"symbol": "BTC/USD", "trade_id": "42", "price": 64000.5, "size": 0.01,
     "side": "buy", "ts": 1767225600.25}

`ts` is the exchange's event time in epoch seconds (an ISO-8601 string is accepted too).

>>> parse_trade(b'{"symbol":"BTC/USD","trade_id":1,"price":10,"size":2,"side":"buy","ts":5}')
Trade(symbol='BTC/USD', trade_id='1', price=10.0, size=2.0, side='buy', ts=5.0)
>>> parse_trade(b'{"symbol":"BTC/USD","trade_id":1,"price":-1,"size":2,"side":"buy","ts":5}')
Traceback (most recent call last):
...
rtml.records.BadRecord: non_positive: price must be > 0, got -1
>>> parse_features(b'{"symbol": "X", "ts": 60, "features": {"ret_1": 0.5, "vol": NaN}}')
FeatureRow(symbol='X', ts=60.0, values={'ret_1': 0.5}, source=None)
>>> parse_example(b'{"symbol": "X", "ts": 60, "label_ts": 30, "features": {}, "target": 0}')
Traceback (most recent call last):
...
rtml.records.BadRecord: leak: label_ts 30.0 is not after ts 60.0
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec.structs import asdict as struct_dict
from msgspec.structs import astuple

from rtml.errors import RtmlError

SIDES = ("buy", "sell")
TRADE_FIELDS = ("symbol", "trade_id", "price", "size", "side", "ts")


class BadRecord(RtmlError):
    """A record that cannot be processed; `kind` names the class of problem for counters."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(slots=True)
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
MAX_ID_CHARS = 128
"""A trade id is remembered for deduplication (50,000 per symbol): exchanges' ids are numbers
or UUIDs, and a 60 KB one would make that memory 3 GB a symbol."""
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
    rtml.records.BadRecord: too_deep: JSON nested deeper than the parser allows
    >>> decode_object(b'{"price": 1' + b'0' * 400 + b'}')
    Traceback (most recent call last):
    ...
    rtml.records.BadRecord: out_of_range: an integer of 401 digits
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


def number(record: dict[str, Any], field: str, positive: bool, text: bool = False) -> float:
    """`record[field]` as a finite float (`positive`: above zero), or BadRecord saying why.

    A number written as text ("64000.5") is read only with `text`: exchanges and files send
    prices that way, while rtml's own records carry JSON numbers.

    Magnitudes are bounded as integers are (below 1e30): two finite sizes of 1e308 would sum
    to an infinite candle volume.

    Text grouped in thousands by commas ("42,280.5", as spreadsheets and quote sites export
    prices) is read; a decimal comma is not ("42,5" could be either), and is `wrong_type`.

    >>> number({"price": "42,280.5"}, "price", positive=True, text=True)
    42280.5
    >>> number({"size": 1e308}, "size", positive=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.records.BadRecord: out_of_range: size is beyond 1e+30 in magnitude, got 1e+308
    >>> number({"price": "1" + "0" * 400}, "price", positive=True, text=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.records.BadRecord: out_of_range: price is beyond 1e+30 in magnitude, got '1000...
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
    if isinstance(value, bool) or not isinstance(value, int | float | str if text else int | float):
        raise BadRecord("wrong_type", f"{field} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        if not (type(value) is str and _GROUPED.match(value)):
            raise BadRecord("wrong_type", f"{field} must be a number, got {value!r:.80}") from None
        number = float(value.replace(",", ""))  # "42,280.5", as spreadsheets export prices
    if math.isinf(number) and type(value) is str and "inf" not in value.lower():
        number = math.copysign(_FLOAT_BOUND, number)  # digits too many for a float: too large
    if not math.isfinite(number):
        raise BadRecord("not_finite", f"{field} must be finite, got {value!r:.80}")
    if not -_FLOAT_BOUND < number < _FLOAT_BOUND:
        raise BadRecord(
            "out_of_range", f"{field} is beyond {_FLOAT_BOUND:g} in magnitude, got {value!r:.80}"
        )
    if positive and number <= 0:
        raise BadRecord("non_positive", f"{field} must be > 0, got {value!r:.80}")
    return number


_GROUPED = re.compile(r"^\s*[-+]?\d{1,3}(,\d{3})+(\.\d*)?\s*$")
"""A number grouped in thousands by commas: 42,280.5 and 1,000,000, not 42,5."""
_NAMED_ZONE = re.compile(r"(?:UTC|GMT)(?:([+-])(\d{1,2}):?(\d{2})?)?$", re.IGNORECASE)
"""A zone written after a time as Dukascopy's and MetaTrader's exports write it: `GMT+0100`,
`UTC-05:00`, `GMT`."""
_DOTTED_DAY = re.compile(r"^(\d{4})[./](\d{1,2})[./](\d{1,2})")
_AMBIGUOUS_DAY = re.compile(r"^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}\b")
EPOCH_UNITS = ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3))
"""Epoch numbers this large are nanoseconds, microseconds or milliseconds: 1e11 seconds is
the year 5138, and 1e11 milliseconds is 1973."""
FIRST_TIME = -9_214_560_000.0
"""1678-01-01, the earliest time rtml reads: the offline store's timestamps (pandas' and
Arrow's nanoseconds) begin in 1677, and a candle of a trade dated 1600 failed the whole write
of its batch."""
_LAST_SECOND = EPOCH_UNITS[-1][0]
"""1e11 s, the year 5138: a time past it is no time of any record (an end-of-time sentinel),
and would be read again as milliseconds wherever it is passed on as seconds."""
LAST_TIME = 9_214_646_400.0
"""2262-01-01, after the last time rtml reads: those timestamps end in 2262. A later one (an
ISO `9999-12-31`, 1e23 ns) could not be stored, and past 1e11 s it would be read again as
milliseconds wherever it is passed on as seconds, and land in 1978."""


def _seconds_read_back(seconds: float, value: Any, field: str = "ts") -> float:
    """`seconds`, if it is a time rtml can store (and so reads back as it is). A time before
    1678, or past the year 5138 (an end-of-time `9999-12-31`, 1e23 ns), is `out_of_range`;
    one of the years between, after 2261, is `future`: a record dated 2286 is one from the
    future, as the event-time rule calls it, that no store could hold either."""
    if FIRST_TIME <= seconds < LAST_TIME:
        return seconds
    if LAST_TIME <= seconds < _LAST_SECOND:
        raise BadRecord(
            "future", f"{field} {value!r:.80} is after 2261, the last year rtml's stores hold"
        )
    raise BadRecord(
        "out_of_range", f"{field} {value!r:.80} is outside 1678-2261, the years rtml reads"
    )


def event_time(record: dict[str, Any], field: str) -> float:
    """`record[field]` as an epoch time in seconds of a record rtml writes (above zero, and
    before `LAST_TIME`), or BadRecord (`future` for the years 2262 to 5138, as `parse_ts`)."""
    return _seconds_read_back(number(record, field, positive=True), record[field], field)


def parse_ts(value: Any) -> float:
    """Epoch seconds from a datetime, ISO-8601, or epoch seconds, milliseconds, microseconds or
    nanoseconds (told apart by size, as exchanges write all four); a time without a zone is
    UTC, whatever the machine's zone.

    >>> parse_ts("2018-01-02"), parse_ts("2018-01-02T00:00:00-05:00"), parse_ts(1514851200)
    (1514851200.0, 1514869200.0, 1514851200.0)
    >>> parse_ts(1514851200000), parse_ts("1514851200000000"), parse_ts(1514851200 * 10**9)
    (1514851200.0, 1514851200.0, 1514851200.0)
    >>> parse_ts("2018.01.02 00:00"), parse_ts("2018/1/2"), parse_ts(20180102)
    (1514851200.0, 1514851200.0, 1514851200.0)
    >>> parse_ts("20180102093000"), parse_ts("2018-01-02 09:30:00")
    (1514885400.0, 1514885400.0)
    >>> parse_ts("2018-01-02 10:30:00.000 GMT+0100"), parse_ts("2018-01-02 09:30 UTC")
    (1514885400.0, 1514885400.0)
    >>> parse_ts("9999-12-31")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.records.BadRecord: out_of_range: ts '9999-12-31' is outside 1678-2261, ...
    >>> parse_ts("2286-01-01")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.records.BadRecord: future: ts '2286-01-01' is after 2261, ...
    """
    if isinstance(value, datetime):  # a pandas Timestamp is one too, and so is its NaT
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        try:
            return _seconds_read_back(moment.timestamp(), value)
        except ValueError:
            raise BadRecord("missing_field", "ts is empty (NaT)") from None
    if isinstance(value, str) and not value.replace(".", "", 1).isdigit():
        text = value.strip().replace("Z", "+00:00")
        if found := _NAMED_ZONE.search(text):  # `GMT+0100`, ` UTC`: the offset ISO writes
            sign, hours, minutes = found.groups()
            offset = f"{sign}{int(hours):02d}:{minutes or '00'}" if sign else "+00:00"
            text = text[: found.start()].rstrip() + offset
        if found := _DOTTED_DAY.match(text):  # 2024.01.02 or 2024/1/2: the same day
            year, month, day = found.groups()
            text = f"{year}-{int(month):02d}-{int(day):02d}{text[found.end() :]}"
        try:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
        except ValueError:
            hint = ""
            if _AMBIGUOUS_DAY.match(text):  # 01/02/2024: January 2 or February 1
                hint = " (a day written D/M/Y or M/D/Y is ambiguous: write it YYYY-MM-DD)"
            raise BadRecord(
                "wrong_type", f"ts is not ISO-8601 or an epoch time: {value!r:.80}{hint}"
            ) from None
        return _seconds_read_back(seconds, value)
    if (type(value) is int or type(value) is str) and len(digits := str(value)) in (8, 14):
        # 20240102 or 20240102093000: a day, or a day and a time, written as digits (as some
        # vendors do), not 1970-08-23 in seconds or the year 2611 in milliseconds
        with contextlib.suppress(ValueError):
            d = digits.ljust(14, "0")  # a day alone is at midnight
            moment = datetime(
                int(d[:4]),
                int(d[4:6]),
                int(d[6:8]),
                int(d[8:10]),
                int(d[10:12]),
                int(d[12:]),
                0,
                UTC,
            )
            if 1970 < moment.year <= 2200:  # after 1970, as every epoch time here is
                return moment.timestamp()
    seconds = number({"ts": value}, "ts", positive=True, text=True)
    for least, per_second in EPOCH_UNITS:
        if seconds >= least:
            return _seconds_read_back(seconds / per_second, value)
    return _seconds_read_back(seconds, value)


def parse_trade(raw: bytes | str | dict[str, Any]) -> Trade:
    """Validate one trade; raises BadRecord naming what is wrong."""
    record = raw if isinstance(raw, dict) else decode_object(raw)
    if not isinstance(record, dict):
        raise BadRecord("not_json", f"expected a JSON object, got {type(record).__name__}")
    try:
        symbol, side, trade_id = record["symbol"], record["side"], record["trade_id"]
        record["price"], record["size"], record["ts"]
    except KeyError:
        _required(record, TRADE_FIELDS)
        raise
    if type(symbol) is not str or not symbol:
        _symbol(record)
    if side not in SIDES:
        raise BadRecord("wrong_type", f"side must be one of {SIDES}, got {side!r:.80}")
    if type(trade_id) is not str and type(trade_id) is not int:
        raise BadRecord("wrong_type", f"trade_id must be a string or integer, got {trade_id!r:.80}")
    if type(trade_id) is str and len(trade_id) > MAX_ID_CHARS:
        raise BadRecord(
            "out_of_range", f"trade_id is {len(trade_id)} characters; at most {MAX_ID_CHARS}"
        )
    return Trade(
        symbol=symbol,
        trade_id=str(trade_id),
        price=number(record, "price", positive=True, text=True),
        size=_size(record),
        side=side,
        ts=parse_ts(record["ts"]),
    )


@dataclass(slots=True)
class FeatureRow:
    """Features of `symbol`'s candle that closed at `ts` (epoch seconds)."""

    symbol: str
    ts: float
    values: dict[str, float]
    # (partition, offset) of the trade whose arrival closed the candle, when one did
    source: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "ts": self.ts, "features": self.values}


@dataclass(slots=True)
class Example:
    """Features of the candle closing at `ts` with its target, known at `label_ts` = ts + H."""

    symbol: str
    ts: float
    label_ts: float
    features: dict[str, float]
    target: float

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "ts": self.ts,
            "label_ts": self.label_ts,
            "features": self.features,
            "target": self.target,
        }


@dataclass(slots=True)
class Prediction:
    """A `predictions` record: the version that made it and the newest label time it learned."""

    symbol: str
    ts: float
    prediction: float
    version: int
    trained_through: float
    model: str = ""  # the registered model the version belongs to (shards have several)

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "ts": self.ts,
            "prediction": self.prediction if math.isfinite(self.prediction) else None,
            "model": self.model,
            "model_version": str(self.version),
            "trained_through": self.trained_through,
        }


def _required(record: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        if field not in record:
            missing = [f for f in fields if f not in record]
            raise BadRecord("missing_field", f"missing {', '.join(missing)}")


def _size(record: dict[str, Any]) -> float:
    """A trade's size: zero is a price without volume (an index level, a currency quote, a
    candle file without a volume column), negative is refused."""
    size = record["size"]
    if type(size) is float and 0.0 <= size < _FLOAT_BOUND:
        return size  # the common case, checked cheaply (NaN fails the bound)
    size = number(record, "size", positive=False, text=True)
    if size < 0:
        raise BadRecord("non_positive", f"size must be >= 0, got {record['size']!r:.80}")
    return size


def _symbol(record: dict[str, Any]) -> str:
    symbol = record["symbol"]
    if type(symbol) is not str or not symbol:
        raise BadRecord("wrong_type", f"symbol must be a non-empty string, got {symbol!r:.80}")
    return symbol


def _object(record: dict[str, Any], field: str) -> dict[str, Any]:
    value = record[field]
    if not isinstance(value, dict):
        raise BadRecord("wrong_type", f"{field} must be an object, got {type(value).__name__}")
    return value


_FLOAT = {float}


def _values(values: dict[str, Any], names: Iterable[str] | None) -> dict[str, float]:
    """The finite numbers among `values` (of `names`, or all); the rest are left out, as River
    models expect of missing values. bool is an int to Python, but not a feature value; v - v
    is 0.0 only for a finite number."""
    if names is not None:
        # the usual record, every name a finite float: checked in two passes at C speed (a sum
        # is finite only if every term is; if not, the general path decides value by value).
        # rtml's own examples carry exactly the names, in order: then the object is copied whole
        if type(names) is list and len(values) == len(names) and list(values) == names:
            given = values.values()
            if set(map(type, given)) <= _FLOAT and math.isfinite(sum(given)):
                return values.copy()
        try:
            picked = {n: values[n] for n in names}
        except KeyError:
            pass
        else:
            if set(map(type, picked.values())) <= _FLOAT and math.isfinite(sum(picked.values())):
                return picked
    keys = values if names is None else names
    return {
        n: float(v)
        for n in keys
        if (type(v := values.get(n)) is float or type(v) is int) and v - v == 0
    }


FEATURES_FIELDS = ("symbol", "ts", "features")
EXAMPLE_FIELDS = ("symbol", "ts", "label_ts", "features", "target")
PREDICTION_FIELDS = ("symbol", "ts", "prediction", "model_version")


def usual_ts(ts: Any) -> float | None:
    """A record's time as rtml writes it (a float) or as many write it (whole seconds), above
    zero and before `LAST_TIME`; None for anything else, which `event_time` then reads.

    >>> usual_ts(1_700_000_000), usual_ts(1.5), usual_ts(0), usual_ts("1"), usual_ts(True)
    (1700000000.0, 1.5, None, None, None)
    """
    if type(ts) is float:
        return ts if 0.0 < ts < LAST_TIME else None
    if type(ts) is int and 0 < ts < LAST_TIME:
        return float(ts)
    return None


def parse_features(raw: bytes | dict[str, Any], names: Iterable[str] | None = None) -> FeatureRow:
    """Validate a `features` record (its bytes, or the object they decode to); its values are
    the finite ones of `names` (or all)."""
    record = decode_object(raw) if isinstance(raw, bytes) else raw
    if not isinstance(record, dict):
        raise BadRecord("not_json", f"expected a JSON object, got {type(record).__name__}")
    try:  # the usual record, as rtml writes it, checked in one go; anything else step by step
        symbol, ts, features = record["symbol"], record["ts"], record["features"]
    except KeyError:
        pass
    else:
        if (
            type(symbol) is str
            and symbol
            and type(features) is dict
            and (seconds := usual_ts(ts)) is not None
        ):
            return FeatureRow(symbol, seconds, _values(features, names))
    _required(record, FEATURES_FIELDS)
    symbol = _symbol(record)
    ts = event_time(record, "ts")
    return FeatureRow(symbol, ts, _values(_object(record, "features"), names))


def _bounded(
    kind: str, names: Sequence[str], bounds: Mapping[str, tuple[float, float]]
) -> type[msgspec.Struct]:
    """A msgspec object of `names`, each a number within its `bounds` (inclusive); keys not
    named are passed over."""
    if unbounded := [name for name in names if name not in bounds]:
        raise ValueError(f"no bounds for {unbounded}")
    return msgspec.defstruct(
        kind,
        [(n, Annotated[float, msgspec.Meta(ge=bounds[n][0], le=bounds[n][1])]) for n in names],
        gc=False,
    )


_SYMBOL = Annotated[str, msgspec.Meta(min_length=1)]
_TIME = Annotated[float, msgspec.Meta(gt=0.0, lt=LAST_TIME)]  # as `usual_ts` takes it


class UsualTrades:
    """A trade as rtml and exchanges' feeds write it, read and checked in one go, for the
    feature pipeline, as `UsualFeatures` reads `features`: a non-empty string `symbol`, a
    string (at most `MAX_ID_CHARS`) or 64-bit integer `trade_id`, a `price` above zero and a
    `size` not below it (numbers, both below 1e30), a `side` of `SIDES` and a `ts` of epoch
    seconds from 1973 on, before `LAST_TIME` (smaller numbers may be days written as digits).
    For those records `parse_trade(raw)` gives the same trade (tests/test_feature_logic.py);
    any other record (a price as text, an ISO time, milliseconds) gives None, and
    `parse_trade` reads it.

    >>> UsualTrades().read(b'{"symbol":"X","trade_id":7,"price":10,"size":2,"side":"buy",'
    ...                    b'"ts":1700000000.5}')
    Trade(symbol='X', trade_id='7', price=10.0, size=2.0, side='buy', ts=1700000000.5)
    """

    __slots__ = ("_decode",)

    def __init__(self) -> None:
        record = msgspec.defstruct(
            "UsualTrade",
            [
                ("symbol", _SYMBOL),
                ("trade_id", Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)] | int),
                ("price", Annotated[float, msgspec.Meta(gt=0.0, lt=_FLOAT_BOUND)]),
                ("size", Annotated[float, msgspec.Meta(ge=0.0, lt=_FLOAT_BOUND)]),
                ("side", Literal[SIDES]),
                ("ts", Annotated[float, msgspec.Meta(ge=1e8, lt=LAST_TIME)]),
            ],
            gc=False,
        )
        self._decode = msgspec.json.Decoder(record).decode

    def read(self, raw: bytes) -> Trade | None:
        try:
            t: Any = self._decode(raw)
        except Exception:  # not the usual trade: `parse_trade` says what is wrong
            return None
        trade_id = t.trade_id
        if type(trade_id) is int and not -(2**63) <= trade_id < 2**64:
            return None  # beyond 64 bits, which `decode_object` reads as a float
        return Trade(t.symbol, str(trade_id), t.price, t.size, t.side, t.ts)


class UsualFeatures:
    """rtml's own `features` record, read and checked in one go: for a consumer that reads
    many of them (the streaming predictor), where `parse_features` after `decode_object`
    builds a dict and checks it in Python.

    `read` gives (symbol, ts, values) when the record is a JSON object with a non-empty
    string `symbol`, a `ts` that `usual_ts` takes and a `features` object in which each of
    `names` is a number within its `bounds` (inclusive; every name has bounds); other keys
    are passed over. For those records `parse_features(raw, names)` gives the same symbol,
    time and values (tests/test_feature_logic.py). Any other record gives None, and
    `parse_features` says what is wrong with it.

    >>> usual = UsualFeatures(["a", "b"], {"a": (-1.0, 1.0), "b": (0.0, 9.0)})
    >>> usual.read(b'{"symbol": "X", "ts": 60, "features": {"b": 3, "a": 0.5, "c": "?"}}')
    ('X', 60.0, (0.5, 3.0))
    >>> usual.read(b'{"symbol": "X", "ts": 60, "features": {"b": 3, "a": 1.5}}') is None
    True
    """

    __slots__ = ("_decode",)

    def __init__(self, names: Sequence[str], bounds: Mapping[str, tuple[float, float]]) -> None:
        record = msgspec.defstruct(
            "UsualFeaturesRecord",
            [
                ("symbol", _SYMBOL),
                ("ts", _TIME),
                ("features", _bounded("UsualFeatureValues", names, bounds)),
            ],
            gc=False,
        )
        self._decode = msgspec.json.Decoder(record).decode

    def read(self, raw: bytes) -> tuple[str, float, tuple[float, ...]] | None:
        try:
            record: Any = self._decode(raw)
        except Exception:  # not the usual record (however the decoder says so): the slow path
            return None  # reads it again, and says what is wrong
        return record.symbol, record.ts, astuple(record.features)


class UsualExamples:
    """rtml's own `examples` record, read and checked in one go, for the trainer, as
    `UsualFeatures` reads `features`: a non-empty string `symbol`, `ts` and `label_ts` that
    `usual_ts` takes with the label after the features, each of `names` a number within its
    `bounds` and the `target` within `target_bounds`. For those records
    `parse_example(raw, names)` gives the same example, with every name, and none is
    out of its bounds (tests/test_feature_logic.py); any other record gives None.

    >>> usual = UsualExamples(["a"], {"a": (-1.0, 1.0)}, (-1.0, 1.0))
    >>> usual.read(b'{"symbol":"X","ts":60,"label_ts":360,"features":{"a":0.5},"target":0}')
    Example(symbol='X', ts=60.0, label_ts=360.0, features={'a': 0.5}, target=0.0)
    >>> usual.read(b'{"symbol":"X","ts":60,"label_ts":60,"features":{"a":0.5},"target":0}')
    """

    __slots__ = ("_decode",)

    def __init__(
        self,
        names: Sequence[str],
        bounds: Mapping[str, tuple[float, float]],
        target_bounds: tuple[float, float],
    ) -> None:
        low, high = target_bounds
        record = msgspec.defstruct(
            "UsualExampleRecord",
            [
                ("symbol", _SYMBOL),
                ("ts", _TIME),
                ("label_ts", _TIME),
                ("features", _bounded("UsualExampleValues", names, bounds)),
                ("target", Annotated[float, msgspec.Meta(ge=low, le=high)]),
            ],
            gc=False,
        )
        self._decode = msgspec.json.Decoder(record).decode

    def read(self, raw: bytes) -> Example | None:
        try:
            record: Any = self._decode(raw)
        except Exception:  # not the usual record: `parse_example` says what is wrong
            return None
        if not record.ts < record.label_ts:
            return None
        # the struct's fields are `names`, in order
        features = struct_dict(record.features)
        return Example(record.symbol, record.ts, record.label_ts, features, record.target)


def parse_example(raw: bytes | dict[str, Any], names: Iterable[str] | None = None) -> Example:
    """Validate an `examples` record; its features are the finite ones of `names` (or all).

    A learner passes the names its model reads: a record carrying thousands of other keys
    would otherwise grow the model's weights by one per key, for good.

    >>> many = {f"k{i}": 1.0 for i in range(3000)} | {"ret_1": 0.5}
    >>> raw = {"symbol": "X", "ts": 60, "label_ts": 360, "features": many, "target": 0.0}
    >>> parse_example(raw, ["ret_1"]).features
    {'ret_1': 0.5}
    """
    record = decode_object(raw) if isinstance(raw, bytes) else raw
    if not isinstance(record, dict):
        raise BadRecord("not_json", f"expected a JSON object, got {type(record).__name__}")
    try:  # the usual record, as rtml writes it, checked in one go; anything else step by step
        symbol, features = record["symbol"], record["features"]
        ts, label_ts, target = record["ts"], record["label_ts"], record["target"]
    except KeyError:
        pass
    else:
        if (
            type(symbol) is str
            and symbol
            and type(features) is dict
            and type(ts) is float
            and type(label_ts) is float
            and type(target) is float
            and 0.0 < ts < label_ts < LAST_TIME
            and -_FLOAT_BOUND < target < _FLOAT_BOUND
        ):
            return Example(symbol, ts, label_ts, _values(features, names), target)
    _required(record, EXAMPLE_FIELDS)
    symbol = _symbol(record)
    features = _object(record, "features")
    ts, label_ts = event_time(record, "ts"), event_time(record, "label_ts")
    target = number(record, "target", positive=False)
    if label_ts <= ts:
        raise BadRecord("leak", f"label_ts {label_ts} is not after ts {ts}")
    return Example(symbol, ts, label_ts, _values(features, names), target)


def parse_prediction(raw: bytes) -> Prediction:
    """Validate a `predictions` record; raises BadRecord naming what is wrong."""
    record = decode_object(raw)
    _required(record, PREDICTION_FIELDS)
    symbol = _symbol(record)
    ts = event_time(record, "ts")
    if record["prediction"] is None:
        raise BadRecord("no_prediction", "the model gave no finite prediction")
    prediction = number(record, "prediction", positive=False)
    version = record["model_version"]  # rtml writes it as a string, as the registry does
    # ASCII digits: `isdigit` takes `²`, which `int` refuses
    if (
        type(version) is str
        and version.isascii()
        and version.isdigit()
        and len(version) <= MAX_INT_DIGITS
    ):
        version = int(version)
    if type(version) is not int or not 0 <= version < _INT_BOUND:
        raise BadRecord("wrong_type", f"model_version must be a whole number, got {version!r:.80}")
    trained = record.get("trained_through")
    through = float(trained) if type(trained) is float or type(trained) is int else math.nan
    model = record.get("model")
    name = model[:200] if isinstance(model, str) else ""
    return Prediction(symbol, ts, prediction, version, through, name)
