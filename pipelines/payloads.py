"""Market data as exchanges' and brokers' APIs give it, saved to a file as it came.

A REST response wraps its records in an object (OKX's `{"code": "0", "data": [...]}`, Bybit's
`{"result": {"list": [...]}}`, Kraken's `{"result": {"XXBTZUSD": [[...]], "last": ...}}`,
Polygon's and Alpaca's `{"results": [...], "ticker": "AAPL"}`), and many APIs name a record's
fields with one letter (Binance's `p`, `q`, `T`; Alpaca's and Polygon's `o`, `h`, `l`, `c`,
`t`). `records_of` finds the records in such an object, with the symbol the object gives
them, and `one_letter_names` says what one-letter fields are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

RECORDS_DEPTH = 3
"""How far into a JSON object its records are looked for (Bybit's are two levels down)."""

_GENERIC = frozenset(
    {
        "data",
        "result",
        "results",
        "list",
        "items",
        "records",
        "rows",
        "trades",
        "candles",
        "klines",
        "ohlc",
        "ohlcv",
        "bars",
        "ticks",
        "quotes",
        "prices",
        "values",
        "history",
        "payload",
        "response",
        "body",
    }
)
"""Keys a response keeps its records under that are not an instrument's name."""

_SYMBOL_KEYS = ("symbol", "ticker", "instid", "instrument", "pair", "product_id", "s")
"""A scalar beside the records, naming their instrument (Polygon's and Alpaca's `ticker` and
`symbol`, OKX's `instId`)."""

_INSTRUMENT = re.compile(r"^[A-Z0-9][A-Z0-9./:_-]{1,39}$")
"""A key that is an instrument's name (Kraken's `XXBTZUSD`): capitals, digits, separators."""


def _is_records(value: Any) -> bool:
    """Whether `value` is an array of objects, or of rows."""
    if not isinstance(value, list) or not value:
        return False
    head = value[:100]
    return all(isinstance(v, dict) for v in head) or all(isinstance(v, list) for v in head)


def records_of(document: dict[str, Any]) -> tuple[list[Any], str | None] | None:
    """The longest array of records (objects, or rows of values) in a JSON object, up to
    `RECORDS_DEPTH` levels down, and the instrument they are of: the key they are under when
    it names one, or a symbol given beside them. None when the object holds no array of
    records: it is one record itself.

    >>> records_of({"code": "0", "data": [{"px": "1"}, {"px": "2"}]})
    ([{'px': '1'}, {'px': '2'}], None)
    >>> records_of({"error": [], "result": {"XXBTZUSD": [["1", "2", 3]], "last": "9"}})
    ([['1', '2', 3]], 'XXBTZUSD')
    >>> records_of({"results": [{"o": 1}], "ticker": "AAPL"})
    ([{'o': 1}], 'AAPL')
    >>> records_of({"symbol": "X", "price": 1}) is None
    True
    """
    best: tuple[list[Any], str | None] | None = None

    def visit(node: dict[str, Any], depth: int, symbol: str | None) -> None:
        nonlocal best
        loose = {str(k).lower(): v for k, v in node.items()}
        given = next(
            (
                str(v)
                for k in _SYMBOL_KEYS
                if isinstance(v := loose.get(k), str) and _INSTRUMENT.match(v.upper())
            ),
            symbol,
        )
        for key, value in node.items():
            if _is_records(value):
                name = str(key)
                named = name if _INSTRUMENT.match(name) and name.lower() not in _GENERIC else None
                if best is None or len(value) > len(best[0]):
                    best = (value, named or given)
            elif isinstance(value, dict) and depth < RECORDS_DEPTH:
                visit(value, depth + 1, given)

    visit(document, 1, None)
    return best


def one_letter_names(columns: Iterable[Any]) -> dict[Any, str]:
    """rtml's names for records whose fields are named with one letter, as APIs send them:
    a candle's `o`, `h`, `l`, `c`, `v` and `t` (its start: Binance's klines, Polygon's and
    Alpaca's bars); a trade's `p`, its size `q` (Binance) or else `s` (Alpaca), its time `T`
    (Binance) or else `t`, its id `a` or `t` (Binance) or `i` (Alpaca), Binance's symbol `s`
    and `m` (the buyer made the market). Nothing for records with longer names.

    >>> one_letter_names(["e", "E", "s", "t", "p", "q", "T", "m", "M"])
    {'p': 'price', 'q': 'size', 'T': 'ts', 't': 'trade_id', 's': 'symbol', 'm': 'is_buyer_maker'}
    >>> one_letter_names(["t", "x", "p", "s", "c", "i", "z"])
    {'p': 'price', 's': 'size', 't': 'ts', 'i': 'trade_id'}
    >>> one_letter_names(["v", "vw", "o", "c", "h", "l", "t", "n"])
    {'o': 'open', 'h': 'high', 'l': 'low', 'c': 'close', 'v': 'volume', 't': 'ts'}
    >>> one_letter_names(["price", "p"])
    {}
    """
    found = {str(c): c for c in columns}
    if not found or any(len(name) > 2 for name in found):
        return {}
    names: dict[Any, str] = {}

    def name(field: str, as_: str) -> None:
        if field in found and found[field] not in names:
            names[found[field]] = as_

    if {"o", "h", "l", "c"} <= set(found):
        for field, as_ in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close")):
            name(field, as_)
        name("v", "volume")
        name("t", "ts")
        return names
    if "p" not in found:
        return {}
    name("p", "price")
    binance = "q" in found
    name("q" if binance else "s", "size")
    name("T" if "T" in found else "t", "ts")
    name("a" if "a" in found else "t" if "T" in found else "i", "trade_id")
    if binance:
        name("s", "symbol")
        name("m", "is_buyer_maker")
    return names


def records_in_lines(lines: list[dict[Any, Any]]) -> tuple[list[dict[str, Any]], int] | None:
    """The records of a file of one message a line when the messages wrap them (Binance's
    combined streams' `{"stream": ..., "data": {...}}`, Kraken's `{"channel": "trade",
    "data": [{...}, ...]}`): the objects under the field that holds one, or an array of
    them, in most messages, and how many messages hold none (a subscription's answer, a
    heartbeat). None when the messages are the records themselves.

    >>> records_in_lines([{"stream": "x", "data": {"p": "1"}}, {"stream": "x", "data": {"p": "2"}}])
    ([{'p': '1'}, {'p': '2'}], 0)
    >>> records_in_lines([{"method": "subscribe", "success": True},
    ...                   {"channel": "trade", "data": [{"price": 1}, {"price": 2}]},
    ...                   {"channel": "trade", "data": [{"price": 3}]}])
    ([{'price': 1}, {'price': 2}, {'price': 3}], 1)
    >>> records_in_lines([{"p": "1", "q": "2"}]) is None
    True
    """
    held: dict[Any, int] = {}
    for message in lines:
        for field, value in message.items():
            if isinstance(value, dict) or (
                isinstance(value, list) and _is_records(value) and isinstance(value[0], dict)
            ):
                held[field] = held.get(field, 0) + 1
    if not held:
        return None
    field, count = max(held.items(), key=lambda item: item[1])
    if count * 2 < len(lines):
        return None
    found: list[dict[str, Any]] = []
    for message in lines:
        value = message.get(field)
        if isinstance(value, dict):
            found.append(value)
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, dict))
    return found, len(lines) - count
