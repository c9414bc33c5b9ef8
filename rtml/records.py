"""The wire records: what rtml's topics carry, each read by one decoder of one schema.

| topic | record | schema | reader |
| --- | --- | --- | --- |
| `trades` | `Trade` | `TradeRecord` | `TRADES` (`parse_trade`) |
| `features` | `FeatureRow` | `FeaturesRecord` of `names` in `bounds` | `features_reader(...)` |
| `examples` | `Example` | `ExamplesRecord` of them and a target | `examples_reader(...)` |
| `predictions` | `Prediction` | `PredictionRecord` | `PREDICTIONS` (`parse_prediction`) |

Each schema is a `msgspec.Struct` whose `Meta` holds every bound, and each reader decodes with
it alone: the bytes of a record, or the object a source built (`Reader.of`). A record that
fails raises `BadRecord`, whose `kind` (mapped from msgspec's error) is the class its dead
letter and its counter carry, and whose text names the field. Records are slotted dataclasses:
building a frozen one costs about 0.7 µs more, once per record on the hot paths.

A trade on the wire is a JSON object::

    {"symbol": "BTC/USD", "trade_id": "42", "price": 64000.5, "size": 0.01,
     "side": "buy", "ts": 1767225600.25}

`ts` is the exchange's event time in epoch seconds or milliseconds, or an RFC 3339 (ISO-8601)
date and time; a time without a zone is UTC. A trade's numbers may be written as JSON strings,
as exchanges write prices; nothing else is read (no thousands marks, no vendor's date formats:
files are read by their presets, `pipelines/market/presets.py`).

>>> parse_trade(b'{"symbol":"BTC/USD","trade_id":1,"price":10,"size":2,"side":"buy","ts":5}')
Trade(symbol='BTC/USD', trade_id='1', price=10.0, size=2.0, side='buy', ts=5.0)
>>> parse_trade(b'{"symbol":"BTC/USD","trade_id":1,"price":-1,"size":2,"side":"buy","ts":5}')
Traceback (most recent call last):
...
rtml.records.BadRecord: non_positive: Expected `float` > 0.0 - at `$.price`
>>> parse_trade(b'{"symbol":"X","trade_id":1,"price":"42,280.5","size":2,"side":"buy","ts":5}')
Traceback (most recent call last):
...
rtml.records.BadRecord: wrong_type: Expected `float`, got `str` - at `$.price`
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
import orjson
from msgspec.structs import asdict as struct_dict

from rtml.errors import RtmlError

SIDES = ("buy", "sell")
MAX_RECORD_BYTES = 64 * 1024
"""No rtml record comes near this (a trade is ~100 bytes, an example ~400); a larger value is
refused before it is parsed, so its cost is bounded."""
MAX_ID_CHARS = 128
"""A trade id is remembered for deduplication while its candle is open: exchanges' ids are
numbers or UUIDs, and a 60 KB one would make that memory grow by as much."""
MAX_INT_DIGITS = 30
BOUND = 1e30
"""Numbers are below this in magnitude: two finite sizes of 1e308 would sum to an infinite
candle volume."""
FIRST_TIME = -9_214_560_000.0
"""1678-01-01, the earliest time rtml reads: the offline store's timestamps (pandas' and
Arrow's nanoseconds) begin in 1677."""
LAST_TIME = 9_214_646_400.0
"""2262-01-01, after the last time rtml reads: those timestamps end in 2262."""
MILLISECONDS = 1e11
"""An epoch time from this on is in milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973."""


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


# -- schemas: every bound once, as msgspec `Meta` --------------------------------------------

Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Seconds = Annotated[float, msgspec.Meta(gt=0.0, lt=MILLISECONDS)]
"""A time as rtml writes it: epoch seconds after 1970; one of the years 2262 to 5138 is
`future` (`in_years`), one past them `out_of_range`."""
Number = Annotated[float, msgspec.Meta(gt=-BOUND, lt=BOUND)]


class TradeRecord(msgspec.Struct, gc=False):
    symbol: Symbol
    trade_id: (
        Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]
        | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    )
    price: Annotated[float, msgspec.Meta(gt=0.0, lt=BOUND)]
    size: Annotated[float, msgspec.Meta(ge=0.0, lt=BOUND)]
    """Zero is a price without volume (an index level, a currency quote)."""
    side: Literal["buy", "sell"]
    ts: Annotated[float, msgspec.Meta(ge=FIRST_TIME, lt=MILLISECONDS * 1000)] | datetime


class PredictionRecord(msgspec.Struct, gc=False):
    symbol: Symbol
    ts: Seconds
    prediction: Number | None
    model_version: (
        Annotated[str, msgspec.Meta(pattern=f"^[0-9]{{1,{MAX_INT_DIGITS}}}$")]
        | Annotated[int, msgspec.Meta(ge=0)]
    )
    """A whole number: rtml writes it as a string, as the registry does."""
    trained_through: float | None = None
    model: Annotated[str, msgspec.Meta(max_length=200)] = ""


def values_schema(
    name: str, names: Sequence[str], bounds: Mapping[str, tuple[float, float]]
) -> type[msgspec.Struct]:
    """An object holding each of `names`, a number within its `bounds` (inclusive); other keys
    are passed over (a model reads only its names: each other key would become a weight)."""
    if unbounded := [n for n in names if n not in bounds]:
        raise ValueError(f"no bounds for {unbounded}")
    fields = [(n, Annotated[float, msgspec.Meta(ge=bounds[n][0], le=bounds[n][1])]) for n in names]
    return msgspec.defstruct(name, fields, gc=False)


def record_schema(name: str, fields: list[tuple[str, Any]]) -> type[msgspec.Struct]:
    """A `features` (or `examples`) record: its symbol and time, then `fields`."""
    return msgspec.defstruct(name, [("symbol", Symbol), ("ts", Seconds), *fields], gc=False)


# -- readers: one decoder a topic --------------------------------------------------------------

R = TypeVar("R")


def _kind(error: str) -> str:
    """The class of a msgspec error, as dead letters and counters name it."""
    if error.startswith("Object missing required field"):
        return "missing_field"
    if error.startswith("Expected `object`") and " - at `$." not in error:
        return "not_json"  # the record itself is no JSON object
    if re.match(r"Expected `(float|int)` >=? 0", error):
        return "non_positive"
    if re.match(
        r"Expected `(float|int)` [<>]|Number out of range|Expected `str` of length <=", error
    ):
        return "out_of_range"
    return "wrong_type"


class Reader(Generic[R]):
    """Reads one topic's records with its schema: `read` the bytes, `of` an object a source
    built (a file's row, a feed's message), both through the same `msgspec` checks."""

    __slots__ = ("_build", "_decode", "schema", "strict")

    def __init__(
        self, schema: type[msgspec.Struct], build: Callable[[Any], R], strict: bool = True
    ) -> None:
        self.schema, self.strict = schema, strict
        self._decode = msgspec.json.Decoder(schema, strict=strict).decode
        self._build = build

    def read(self, raw: bytes) -> R:
        if len(raw) > MAX_RECORD_BYTES:
            raise BadRecord(
                "too_large", f"{len(raw)} bytes; a record is at most {MAX_RECORD_BYTES}"
            )
        try:
            return self._build(self._decode(raw))
        except RecursionError:
            raise BadRecord("too_deep", "JSON nested deeper than the parser allows") from None
        except msgspec.ValidationError as exc:
            kind = "not_finite" if _NOT_FINITE_TEXT.search(raw) else _kind(str(exc))
            raise BadRecord(kind, str(exc)[:300]) from None
        except msgspec.DecodeError as exc:
            raise BadRecord(*_not_json(raw, exc)) from None

    def of(self, record: Mapping[str, Any]) -> R:
        try:
            return self._build(msgspec.convert(record, self.schema, strict=self.strict))
        except msgspec.ValidationError as exc:
            finite = all(map(_finite, record.values()))
            raise BadRecord(_kind(str(exc)) if finite else "not_finite", str(exc)[:300]) from None


_NOT_FINITE_TEXT = re.compile(rb'"\s*[-+]?(?i:nan|inf|infinity)\s*"')
"""A number written as the text NaN or Infinity, which `strict=False` reads as one."""


def _not_json(raw: bytes, exc: Exception) -> tuple[str, str]:
    """NaN and Infinity are JSON to Python and to many producers, not to the standard: a record
    carrying them is `not_finite`, anything else that does not parse `not_json`."""
    if re.search(rb"(?<![\w\"])-?(NaN|Infinity)(?![\w\"])", raw):
        return "not_finite", "a number is NaN or infinite"
    return "not_json", str(exc)[:200]


def in_years(seconds: float, field: str = "ts") -> float:
    """`seconds`, if the stores can hold it (1678 to 2261); else BadRecord: `future` for the
    years 2262 to 5138 (a record dated 2286 is from the future), `out_of_range` otherwise (an
    end-of-time `9999-12-31`, a trade dated 1600).

    >>> in_years(1.7e9)
    1700000000.0
    >>> in_years(9.9e9)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rtml.records.BadRecord: future: 9900000000.0 is after 2261, ...
    """
    if FIRST_TIME <= seconds < LAST_TIME:
        return seconds
    if LAST_TIME <= seconds < MILLISECONDS:
        raise BadRecord(
            "future",
            f"{seconds!r:.40} is after 2261, the last year rtml's stores hold - at `$.{field}`",
        )
    raise BadRecord("out_of_range", f"{seconds!r:.40} is outside 1678-2261 - at `$.{field}`")


def _seconds(ts: float | datetime) -> float:
    if isinstance(ts, datetime):
        moment = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
        try:
            return in_years(moment.timestamp())
        except (OverflowError, ValueError, OSError):
            raise BadRecord("out_of_range", f"ts {ts!r:.60} is outside 1678-2261") from None
    return in_years(ts / 1000 if ts >= MILLISECONDS else ts)


def _trade(t: Any) -> Trade:
    return Trade(t.symbol, str(t.trade_id), t.price, t.size, t.side, _seconds(t.ts))


TRADES: Reader[Trade] = Reader(TradeRecord, _trade, strict=False)
"""Exchanges write prices as JSON strings: `trades` reads a number in a string too. rtml's own
topics carry JSON numbers, and their readers take nothing else."""


def parse_trade(raw: bytes | str | Mapping[str, Any]) -> Trade:
    """A trade from its bytes or from the object a source built; BadRecord saying what is
    wrong."""
    if isinstance(raw, Mapping):
        return TRADES.of(raw)
    return TRADES.read(raw.encode() if isinstance(raw, str) else raw)


def features_reader(
    names: Sequence[str], bounds: Mapping[str, tuple[float, float]]
) -> Reader[FeatureRow]:
    names = list(names)
    values = values_schema("FeatureValues", names, bounds)

    def build(r: Any) -> FeatureRow:
        return FeatureRow(r.symbol, in_years(r.ts), struct_dict(r.features))  # `names`, in order

    return Reader(record_schema("FeaturesRecord", [("features", values)]), build)


def examples_reader(
    names: Sequence[str], bounds: Mapping[str, tuple[float, float]], target: tuple[float, float]
) -> Reader[Example]:
    names = list(names)
    values = values_schema("ExampleValues", names, bounds)
    bounded = Annotated[float, msgspec.Meta(ge=target[0], le=target[1])]
    schema = record_schema(
        "ExamplesRecord", [("label_ts", Seconds), ("features", values), ("target", bounded)]
    )

    def build(r: Any) -> Example:
        in_years(r.ts), in_years(r.label_ts, "label_ts")
        if not r.ts < r.label_ts:
            raise BadRecord("leak", f"label_ts {r.label_ts} is not after ts {r.ts}")
        return Example(r.symbol, r.ts, r.label_ts, struct_dict(r.features), r.target)

    return Reader(schema, build)


def _prediction(r: Any) -> Prediction:
    if r.prediction is None:
        raise BadRecord("no_prediction", "the model gave no finite prediction")
    through = r.trained_through if r.trained_through is not None else math.nan
    in_years(r.ts)
    return Prediction(r.symbol, r.ts, r.prediction, int(r.model_version), through, r.model)


PREDICTIONS: Reader[Prediction] = Reader(PredictionRecord, _prediction)


def parse_prediction(raw: bytes) -> Prediction:
    return PREDICTIONS.read(raw)


def decode_object(raw: bytes | str, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """A JSON object that is no topic's record (an HTTP body, an exchange's message), bounded
    in size, with integers bounded (`out_of_range`) and NaN `not_finite`; BadRecord otherwise."""
    if len(raw) > max_bytes:
        raise BadRecord("too_large", f"{len(raw)} bytes; at most {max_bytes}")
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson is strict (no NaN, no integer beyond 64 bits, nesting up to 1024)
        try:
            record = json.loads(raw, parse_int=_bounded_int)
        except RecursionError:
            raise BadRecord("too_deep", "JSON nested deeper than the parser allows") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRecord("not_json", str(exc)[:200]) from None
        if not isinstance(record, dict) or not all(map(_finite, record.values())):
            raise BadRecord("not_finite", "a number is NaN or infinite") from None
    if not isinstance(record, dict):
        raise BadRecord("not_json", f"expected a JSON object, got {type(record).__name__}")
    return record


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRecord("out_of_range", f"an integer of {len(text)} digits")
    return int(text)


def _finite(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity")
    return not isinstance(value, float) or math.isfinite(value)
