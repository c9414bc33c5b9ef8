"""A market file without a header row, read by its shape.

Exchanges' dumps (Binance's trades and klines, Kraken's trades and candles) and vendors' tick
and bar files (HistData's, a terminal's export) often have no header: their first line is
already a row. Such a file is read by the layouts rtml knows by their number of columns and,
for any other, by what each column holds in the file's first rows: a time, a day and a time
of day apart, a trade id, a side, a symbol, and numbers that are a candle's open, high, low
and close, a quote's bid and ask, or a trade's price and size (`by_shape`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from rtml.errors import ConfigError
from rtml.records import BadRecord, parse_ts

log = logging.getLogger(__name__)


HEADERLESS: dict[int, tuple[str, ...]] = {
    12: (
        "ts",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "close_time",
        "quote_volume",
        "trades",
        "taker_base_volume",
        "taker_quote_volume",
        "ignore",
    ),
    7: ("ts", "open", "high", "low", "close", "volume", "trades"),
    6: ("ts", "open", "high", "low", "close", "volume"),
}
"""Candle files without a header row, by their number of columns: Binance's klines (as
data.binance.vision serves them), Kraken's OHLCVT downloads, and a time, OHLC and volume."""


HEADERLESS_TRADES: dict[int, tuple[str, ...]] = {
    7: ("trade_id", "price", "size", "quote_size", "ts", "buyer_maker", "best_match"),
    8: ("trade_id", "price", "size", "first_id", "last_id", "ts", "buyer_maker", "best_match"),
    3: ("ts", "price", "size"),
}
"""Trade files without a header row, by their number of columns: Binance's trades and
aggTrades (told from candles by their `true`/`false` columns) and Kraken's time, price and
volume."""

HEADERLESS_SINCE = 631_152_000.0
"""1990-01-01: the times in a trade file without a header row are after it (electronic
exchanges' dumps); a column of prices or sizes read as times would be in 1970."""

SHAPED = 0.98
"""The share of a headerless file's first rows of numbers that must have its layout's shape
for the file to be read so. Its other rows are read as any file's rows are: one that is not
numbers is refused on its own, with its reason."""

_BOOLEANS = frozenset({"true", "false"})


def is_number(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()


def values_only(first_line: Iterable[Any]) -> bool:
    """Whether a file's first line is values, not names: most of its fields are numbers or
    times (a day, a time of day, a day and a time), and the rest may be what a row also holds
    (a side, `true`/`false`, a symbol, an empty field). Then the file has no header row. A
    header names its columns: `ts,price,size` or `time,bid,ask` has no number or time in it.

    >>> values_only(["1704067200", "42000.5", "", "41999", "42001", "3.5"])
    True
    >>> values_only(["1", "42000.5", "0.1", "42.1", "1704067200000", "true", "true"])
    True
    >>> values_only(["20250101 170000325", "1.03510", "1.03522", "0"])
    True
    >>> values_only(["2025.01.01", "17:00", "1.1", "1.2", "1.0", "1.1", "0"])
    True
    >>> values_only(["EUR/USD", "20250101 00:00:00.123", "1.0351", "1.0352"])
    True
    >>> values_only(["ts", "open"]), values_only(["", "Open"]), values_only(["", ""])
    (False, False, False)
    >>> values_only(["time", "bid", "ask"]), values_only(["Date", "Close 2", "Volume"])
    (False, False)
    """
    fields = [str(f).strip().lstrip("\ufeff") for f in first_line]
    values = sum(is_number(f) or _a_time(f) for f in fields if f and f.lower() != "nan")
    return values * 2 > len(fields)


def _shaped(mask: pd.Series, readable: pd.Series) -> bool:
    """Whether `mask` holds for all but a few of the rows that are numbers at all."""
    return bool(readable.any()) and int(mask.sum()) >= SHAPED * int(readable.sum())


def by_shape(
    path: Path, read: Callable[[tuple[str, ...]], pd.DataFrame], first: list[str]
) -> pd.DataFrame:
    """A file whose first line is values has no header: read by its number of columns and the
    shape of its first rows, as one of the `HEADERLESS_TRADES` (the `true`/`false` columns
    tell Binance's trades from Kraken's candles, both of 7; a time, a price above 0 and a size
    of 0 or more for 3) or `HEADERLESS` candles (low <= open, close <= high, all above 0).
    All but a few rows (`SHAPED`) must have the shape, so one odd row does not make the whole
    file unreadable. A file of no such layout is read by what its columns hold (`_guessed`);
    one that cannot be told is refused, saying how to name its columns."""
    width = len(first)
    fields = [str(f).strip().lower() for f in first]

    trades = HEADERLESS_TRADES.get(width)
    sided = trades is not None and "buyer_maker" in trades
    if trades is not None and sided and fields[trades.index("buyer_maker")] not in _BOOLEANS:
        trades = None  # no true/false where Binance writes them: not its trades
    if trades is not None:
        frame = read(trades)
        head = frame.head(1000)
        price, size = (pd.to_numeric(head[n], errors="coerce") for n in ("price", "size"))
        when = head["ts"].map(ts_or_none).astype(float)
        readable = price.notna() & size.notna() & when.notna()
        # a time, a bid and an ask (a forex tick file) is a quote, read below
        quote = not sided and (_numbers_as([price, size]) or [""])[0] in ("bid", "ask")
        # a time of an exchange's trade: 42000.5 read as a time would be 1970, so a price or
        # a size in the first column does not pass for one
        if not quote and _shaped((price > 0) & (size >= 0) & (when >= HEADERLESS_SINCE), readable):
            log.info("%s has no header row: read as trades (%s)", path, ", ".join(trades))
            if sided:  # the buyer made the market: the taker sold
                maker = frame["buyer_maker"].astype(str).str.strip().str.lower() == "true"
                side = maker.map({True: "sell", False: "buy"})
            else:
                side = pd.Series("buy", frame.index)  # not given (rtml does not use a side)
            return frame.assign(side=side)
    names = HEADERLESS.get(width)
    if names is not None and trades is None:
        frame = read(names)
        head = frame.head(1000)
        o, h, low, c = (
            pd.to_numeric(head[n], errors="coerce") for n in ("open", "high", "low", "close")
        )
        readable = o.notna() & h.notna() & low.notna() & c.notna()
        candles = (low > 0) & (low <= o) & (low <= c) & (o <= h) & (c <= h)
        if _shaped(candles, readable):
            log.info("%s has no header row: read as candles (%s)", path, ", ".join(names))
            return frame
    guessed = _guessed(read(tuple(f"{_UNREAD}{i}" for i in range(width))).head(1000))
    if guessed is not None:
        log.info("%s has no header row: read as %s", path, ", ".join(n for n in guessed if n))
        return _read_columns(read(tuple(name or f"{_UNREAD}{i}" for i, name in enumerate(guessed))))
    known = "; ".join(
        [
            *(f"{n} columns: {','.join(c)}" for n, c in HEADERLESS.items()),
            *(f"trades of {n} columns: {','.join(c)}" for n, c in HEADERLESS_TRADES.items()),
        ]
    )
    raise ConfigError(
        f"{path} has no header row (its first line is values) and its {width} columns are not "
        f"a candle or trade file rtml knows ({known}), nor a time with a candle's, a quote's "
        "(bid, ask) or a trade's (price, size) numbers: add a header row naming the columns, "
        "e.g. ts,open,high,low,close,volume for candles or ts,price,size for trades"
    )


HEADERLESS_UNTIL = 4_102_444_800.0
"""2100-01-01: the times of a headerless file are before it, so a column of large numbers
(ids, sizes in units) is not taken for one."""

_TIME_OF_DAY = re.compile(r"^\d{1,2}:\d{2}(:\d{2}([.,]\d{1,9})?)?$")
"""A time of day in a column of its own, beside a column of days: 17:00, 09:30:00.250."""

_DAY_WRITTEN = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}")
"""A day, in whichever order (31.01.2025, 01/31/2025, 2025.01.31): its order is found later,
from the whole file."""

_UNREAD = "unread column "
"""The name of a headerless file's column that is none of rtml's, numbered: left out."""

GUESS_ROWS = 10
"""A headerless file of no layout rtml knows is read by what its columns hold only when it
has this many rows to tell it by; a shorter one is refused, saying how to name its columns."""

GUESS_COLUMNS = 32
"""Nor one of more columns than this: no market file is that wide, and each column's first
rows are read as times, a cost that would grow with a hostile file's width."""

QUOTE_SPREAD = 0.05
"""A headerless file's two numbers are a quote's bid and ask when, in its first rows, one is
never above the other and they are this close (a share of the higher): a trade's price and
size are not."""


_SYMBOL = re.compile(r"^(?=.{2,40}$)[A-Za-z0-9]*[A-Za-z][A-Za-z0-9./:_-]*$")
"""A symbol in a column of its own: a word of letters and digits, with . / : _ - between;
not one letter, which vendors use for flags (Kraken's `l`imit and `m`arket)."""


def _a_time(text: str) -> bool:
    """Whether a field written as text (not a bare number) is a time or a day."""
    if is_number(text) or not text[:1].isdigit():
        return False
    if _DAY_WRITTEN.match(text) or _TIME_OF_DAY.match(text):
        return True
    return ts_or_none(text) is not None


def _most(mask: pd.Series, given: pd.Series) -> bool:
    """Whether `mask` holds for all but a few (`SHAPED`) of the rows where a value is given."""
    return bool(given.any()) and int((mask & given).sum()) >= SHAPED * int(given.sum())


def _guessed(head: pd.DataFrame) -> list[str] | None:
    """rtml's names for the columns of a headerless file, from its first rows, or None when
    they hold no time, or numbers that are no candle, quote or trade ("" for a column that is
    none of rtml's).

    The time is the column of times after 1990 (or of days, with the next column the time of
    day): of several, the first written as a time, then in milliseconds or finer, then in
    seconds. Of the other columns, one of integers rising row by row is the trade id,
    one of sides (`buy`, `S`, ...) the side, one of text the symbol. The numbers left, in
    order: four that are a candle (low <= open, close <= high) are one, with a volume if a
    fifth follows; two that are close and never cross are a quote's bid and ask (with their
    sizes if two more follow); otherwise a price above 0 and a size of 0 or more.

    >>> row = ["20250101 170000325", "1.0351", "1.0352", "0"]
    >>> ticks = pd.DataFrame([[f"{row[0][:-5]}{i:02d}325", *row[1:]] for i in range(10)])
    >>> _guessed(ticks)
    ['ts', 'bid', 'ask', '']
    >>> _guessed(pd.DataFrame([["2025.01.01", "17:00", "1.1", "1.2", "1.0", "1.1", "5"]] * 10))
    ['date', 'time', 'open', 'high', 'low', 'close', 'volume']
    >>> _guessed(pd.DataFrame([["1.1", "2.0"]] * 10)) is None
    True
    """
    if len(head) < GUESS_ROWS or head.shape[1] > GUESS_COLUMNS:
        return None
    columns = list(head.columns)
    text = {c: head[c].astype(str).str.strip() for c in columns}
    given = {c: head[c].notna() & ~text[c].str.lower().isin(("", "nan", "none")) for c in columns}
    names: dict[Any, str] = {c: "" for c in columns}
    times = []  # (how surely a time, position) of each column of times
    for i, c in enumerate(columns):
        when = text[c].map(ts_or_none).astype(float)
        era = when.between(HEADERLESS_SINCE, HEADERLESS_UNTIL)
        if _most(era | text[c].str.match(_DAY_WRITTEN), given[c]):
            # written as a time, then in milliseconds or finer, then in seconds: a column of
            # ids in the billions reads as seconds of this century too
            numeric = pd.to_numeric(text[c], errors="coerce")
            surely = 2 if _most(numeric.notna(), given[c]) else 0
            times.append((surely - int(surely and _most(numeric.abs() >= 1e11, given[c])), i))
    if not times:
        return None
    i = min(times)[1]
    c, after = columns[i], columns[i + 1] if i + 1 < len(columns) else None
    if after is not None and _most(text[after].str.match(_TIME_OF_DAY), given[after]):
        names[c], names[after] = "date", "time"
    else:
        names[c] = "ts"
    numbers = []
    for c in columns:
        if names[c] or not given[c].any():
            continue
        x = pd.to_numeric(text[c], errors="coerce")
        if _most(x.notna(), given[c]):
            held = x[given[c]]
            if (
                "trade_id" not in names.values()
                and len(held) >= 10
                and bool((held == held.round()).all())
                and held.is_monotonic_increasing
                and held.is_unique
            ):
                names[c] = "trade_id"
            else:
                numbers.append(x)
        elif "side" not in names.values() and _most(
            text[c].str.lower().isin(set(SIDE_SPELLINGS) - {"", "nan", "none"}), given[c]
        ):
            names[c] = "side"
        elif "symbol" not in names.values() and _most(
            text[c].str.match(_SYMBOL) & ~text[c].str.lower().isin(_BOOLEANS), given[c]
        ):
            names[c] = "symbol"
    kinds = _numbers_as(numbers)
    if kinds is None:
        return None
    for x, name in zip(numbers, kinds, strict=False):
        names[x.name] = name
    return [names[c] for c in columns]


def _numbers_as(numbers: list[pd.Series]) -> list[str] | None:
    """What a headerless file's numbers are, in order (see `_guessed`), or None: a candle is
    four or five numbers, a quote two to four, a trade two or three (a price, a size, and a
    value of theirs rtml does not read). More numbers than those, unless they are a candle,
    are not guessed."""
    if 4 <= len(numbers) <= 5:
        o, h, low, c = numbers[:4]
        given = o.notna() & h.notna() & low.notna() & c.notna()
        if _most((low > 0) & (low <= o) & (low <= c) & (o <= h) & (c <= h), given):
            return ["open", "high", "low", "close", "volume"]
    if 2 <= len(numbers) <= 4:
        a, b = numbers[:2]
        given = a.notna() & b.notna()
        top = pd.concat([a, b], axis=1).max(axis=1)
        close = (a > 0) & (b > 0) & ((a - b).abs() <= QUOTE_SPREAD * top)
        for under, over in (("bid", "ask"), ("ask", "bid")):
            first_lower = a <= b if under == "bid" else a >= b
            if _most(close & first_lower, given) and not bool((a == b)[given].all()):
                sizes = [f"{under}_size", f"{over}_size"] if len(numbers) >= 4 else []
                return [under, over, *sizes]
        if len(numbers) <= 3 and _most((a > 0) & (b >= 0), given):
            return ["price", "size"]
    return None


def _read_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A headerless file's frame without its columns that are none of rtml's. Trades without
    ids get theirs where every file's do (`files._trades_without_id_or_side`)."""
    return frame.drop(columns=[c for c in frame.columns if str(c).startswith(_UNREAD)])


def row_ids(frame: pd.DataFrame) -> pd.Series:
    """Trade ids for a file that gives none: its time and row, so each trade of the file is
    one trade (the pipeline drops a trade id it has seen), the same file replayed twice is
    the same trades, and two files of one symbol's different days do not collide."""
    return frame["ts"].astype(str) + "#" + pd.Series(range(len(frame)), frame.index).astype(str)


SIDE_SPELLINGS = {
    **{spelled: "buy" for spelled in ("buy", "b", "bid", "bought", "1", "1.0")},
    **{spelled: "sell" for spelled in ("sell", "s", "a", "ask", "sold", "2", "2.0", "-1", "-1.0")},
    # no aggressor (an auction, a cross): rtml does not use a side, as for a file that gives
    # none
    **{spelled: "buy" for spelled in ("n", "none", "nan", "", "-", "unknown")},
}
"""How exchanges and vendors write a trade's side, by the taker's (aggressor's) side:
`Buy`/`SELL`, `b`/`s`, Databento's `B` (bid), `A` (ask) and `N` (none), FIX's `1` (buy) and
`2` (sell), a sign's `-1` (sell), an empty field. Any other value is refused with the
trade."""


def ts_or_none(value: Any) -> float | None:
    try:
        return parse_ts(value)
    except BadRecord:
        return None  # replay yields it as a bad record; it says nothing of the candle length
