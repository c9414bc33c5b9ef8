"""Reading users' market files: trades or candles as exchanges, data vendors and spreadsheets
write them (delimited text, gzipped or zipped, or Parquet), replayed as trades in event time.

What a file says is read from the file itself: its delimiter and decimal mark, its header (or,
without one, its shape), its columns under the names vendors give them, its days' order, its
times' unit. Rows that cannot be read are yielded as `BadRecord`s with their reason, never
dropped; a file that cannot be read at all is a `ConfigError` saying what to give instead.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import itertools
import json
import logging
import lzma
import math
import re
import statistics
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

import pandas as pd

from rtml.errors import ConfigError
from rtml.pipelines.payloads import one_letter_names, records_in_lines, records_of
from rtml.pipelines.shapes import (
    SIDE_SPELLINGS,
    by_shape,
    is_number,
    row_ids,
    ts_or_none,
    values_only,
)
from rtml.records import BadRecord, Trade, number, parse_trade, parse_ts

log = logging.getLogger(__name__)


TRADE_COLUMNS = ("symbol", "trade_id", "price", "size", "side", "ts")
CANDLE_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")


TEXT_COLUMNS = ("symbol", "trade_id", "side")


DELIMITERS = (",", ";", "\t", "|")


TEXT_SUFFIXES = (".csv", ".txt", ".tsv", ".tab", ".dat")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".feather", ".arrow", ".ipc")


JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
EXCEL_SUFFIXES = (".xlsx", ".xlsm")


def file_kind(path: Path) -> Literal["parquet", "arrow", "text", "json", "excel"]:
    """What a replay file is, by its suffixes in any case: Parquet, delimited text or JSON,
    gzipped or not (`MSFT.CSV`, Stooq's `.txt`, `trades.tsv.gz`, `trades.jsonl.gz`), or a zip
    archive of one such text file (Binance's `BTCUSDT-1m-2024-01.zip`); a ConfigError for
    anything else."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in PARQUET_SUFFIXES:
        return "parquet"
    if suffixes and suffixes[-1] in ARROW_SUFFIXES:
        return "arrow"
    if suffixes and suffixes[-1] in EXCEL_SUFFIXES:
        return "excel"
    if suffixes and suffixes[-1] == ".xls":
        raise ConfigError(
            f"replay file {path}: a workbook of the old Excel format (.xls); save it as .xlsx "
            "or as CSV"
        )
    if suffixes and suffixes[-1] == ".zip":
        return "text"  # pandas refuses an archive of several files, and says so
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz"):
        suffixes.pop()
    if suffixes and suffixes[-1] in TEXT_SUFFIXES:
        return "text"
    if suffixes and suffixes[-1] in JSON_SUFFIXES:
        return "json"
    raise ConfigError(
        f"replay file {path}: use a delimited text file ({', '.join(TEXT_SUFFIXES)}, or one of "
        "them compressed as .gz, .bz2 or .xz, or in a .zip of its own), JSON (an array of "
        "objects or of rows, or one object a line: .json, .jsonl, .ndjson, compressed too), an "
        "Excel workbook (.xlsx: its first sheet), Parquet (.parquet) or Arrow (.feather, .arrow)"
    )


def _read_excel(path: Path) -> pd.DataFrame:
    """The first sheet of a workbook as a table: its header is its first row as wide as the
    widest of its first rows (a title above the table, as spreadsheets often have, is passed
    over); a sheet whose first row is values has no header, and its columns are numbered
    (read by their shape, as a CSV without a header)."""
    try:
        raw = pd.read_excel(path, sheet_name=0, header=None, dtype=object, engine="openpyxl")
    except Exception as exc:  # openpyxl's own errors for a workbook that is not one are many
        raise ConfigError(
            f"replay file {path} could not be read as a workbook ({type(exc).__name__}: "
            f"{str(exc)[:200]}); give an .xlsx saved by a spreadsheet, or a CSV"
        ) from None
    if raw.empty:
        raise ConfigError(f"{path}: its first sheet is empty")
    filled = raw.head(PREAMBLE_LINES + 1).notna().sum(axis=1)
    top = int((filled == filled.max()).to_numpy().argmax())  # the first of the widest rows
    body = raw.iloc[top:].dropna(axis=1, how="all").reset_index(drop=True)
    first = body.iloc[0].dropna()
    if len(first) and (
        all(isinstance(v, int | float | date) or is_number(str(v)) for v in first)
        or values_only(str(v) for v in first)
    ):
        return body.set_axis(range(body.shape[1]), axis=1)  # values (a date is a datetime)
    names = [str(c).strip() if pd.notna(c) else f"column {i}" for i, c in enumerate(body.iloc[0])]
    return body.iloc[1:].set_axis(names, axis=1).reset_index(drop=True)


def _read_json(path: Path) -> tuple[pd.DataFrame, str | None]:
    """A JSON replay file: an array of objects (one a trade or a candle, keys as a CSV's
    header), an array of rows (as exchanges' REST APIs give candles: read by their shape, as a
    CSV without a header), one object a line, or an API's response holding such an array
    (`payloads.records_of`), with the instrument the response names. Any other JSON says
    what to give."""
    with _opened(path) as raw:
        data = raw.read()
    symbol = None
    document: Any = None
    if data.lstrip()[:1] == b"{":
        try:  # one object: a response, or a file of one line
            document = json.loads(data)
        except (ValueError, RecursionError):
            document = None  # one object a line (or not JSON: read below, which says so)
    if isinstance(document, dict):
        found = records_of(document)
        records = [document] if found is None else found[0]
        symbol = None if found is None else found[1]
        data = json.dumps(records).encode()
    lines = document is None and data.lstrip()[:1] == b"{"
    frame = pd.read_json(
        io.BytesIO(data), lines=lines, dtype=False, convert_dates=False, orient="records"
    )
    if (
        lines
        and not _market_columns(frame.columns)  # the messages are the records themselves
        and (inner := records_in_lines(frame.to_dict("records"))) is not None
    ):
        records, other = inner  # each message wraps its records
        if other:
            log.info(
                "%s: %d message(s) without records (answers, heartbeats) passed over", path, other
            )
        frame = pd.DataFrame.from_records(records)
    if not lines and len(frame) and list(frame.columns) == list(range(frame.shape[1])):
        return frame, symbol  # rows: read by their shape
    if frame.shape[1] and all(isinstance(c, str) for c in frame.columns):
        return frame, symbol
    raise ConfigError(
        f"{path}: give a JSON array of objects (one a trade or a candle) or of rows, one "
        "object a line, or an API's response holding such an array"
    )


Compression = Literal["gzip", "bz2", "xz", "zip"]

COMPRESSIONS: dict[str, Compression] = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}
"""A text file's compression by its last suffix (pandas' names for them)."""


def _market_columns(columns: Iterable[Any]) -> bool:
    """Whether `columns` name a trade's price or a candle's prices, as a file or an API does."""
    columns = list(columns)
    named = {*_rtml_names(columns, {}).values(), *one_letter_names(columns).values()}
    return bool(named & {"price", "open", "close"})


def _compression(path: Path) -> Compression | None:
    return COMPRESSIONS.get(path.suffix.lower())


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[IO[bytes] | gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile]:
    """The bytes of a text file, compressed (gzip, bzip2, xz), zipped (its first member) or
    plain."""
    kind = _compression(path)
    if kind == "zip":
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            with archive.open(names[0]) if names else io.BytesIO() as raw:
                yield raw
        return
    if kind == "gzip":
        with gzip.open(path, "rb") as unzipped:
            yield unzipped
    elif kind == "bz2":
        with bz2.open(path, "rb") as unpacked:
            yield unpacked
    elif kind == "xz":
        with lzma.open(path, "rb") as unpacked:
            yield unpacked
    else:
        with path.open("rb") as plain:
            yield plain


def _first_lines(path: Path, n: int, encoding: str = "utf-8-sig") -> list[str]:
    """The first `n` lines of a text file, gzipped, zipped (its first member) or plain."""
    with _opened(path) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, errors="replace")
        return list(itertools.islice(text, n))


ENCODING_PROBE = 1 << 20
"""How much of a file tells its encoding."""


def _encoding(path: Path) -> str:
    """The file's text encoding, from its first bytes: UTF-16 where it starts with a byte
    order mark (a spreadsheet's "Unicode text" export), UTF-8 where its first megabyte is
    (with or without a byte order mark), and otherwise Windows-1252, which spreadsheets and
    older tools in Western locales write (`Eröffnung`, `café`, `€`).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as f:
    ...     _ = f.write("Datum;Eröffnung".encode("cp1252"))
    >>> _encoding(Path(f.name))
    'cp1252'
    """
    with _opened(path) as raw:
        head = raw.read(ENCODING_PROBE)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not a character cut by the probe's end
            return "cp1252"
    return "utf-8-sig"


@dataclass(frozen=True)
class TextLayout:
    """How a delimited file is written, as `read_table` works it out before reading it."""

    compression: Compression | None
    encoding: str
    skip: int  # lines above the header that are not part of the table
    sep: str
    decimal: str

    @classmethod
    def of(cls, path: Path) -> TextLayout:
        compression, encoding = _compression(path), _encoding(path)
        skip = _preamble(_first_lines(path, PREAMBLE_LINES + 1, encoding))
        if skip:
            log.info("%s: the first %d line(s) are not part of the table", path, skip)
        if encoding != "utf-8-sig":
            log.info("%s is read as %s", path, encoding)
        sep, decimal = _delimiter(_first_lines(path, 6 + skip, encoding)[skip:])
        return cls(compression, encoding, skip, sep, decimal)

    def rows(self, path: Path, **kwargs: Any) -> tuple[pd.DataFrame, list[BadRecord]]:
        """The file read as `read` does, but a line with more fields than the table is left
        out and refused on its own, naming its line: one such line made the whole file
        unreadable, whatever its layout (a header, none, yfinance's three)."""
        with warnings.catch_warnings(record=True) as told:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = self.read(path, on_bad_lines="warn", **kwargs)
        refused = [
            BadRecord(
                "wrong_type",
                f"line {line} of {path.name} has {saw} fields where its table has "
                f"{expected}; the line is not read",
            )
            for warning in told
            for line, expected, saw in _TOO_MANY_FIELDS.findall(str(warning.message))
        ]
        return frame, refused

    def read(self, path: Path, **kwargs: Any) -> pd.DataFrame:
        if kwargs.get("decimal") == self.sep:  # pandas reads these as text: `_decimal_comma`
            kwargs["decimal"] = "."
        return pd.read_csv(
            path,
            sep=self.sep,
            compression=self.compression,
            skiprows=self.skip,
            encoding=self.encoding,
            # Windows-1252 leaves five bytes undefined: a stray one is a replaced character
            encoding_errors="replace" if self.encoding == "cp1252" else "strict",
            **kwargs,
        )


PREAMBLE_LINES = 5
"""At most this many lines before the header row that are not part of the table."""

_SEPARATOR_HINT = re.compile(r'^\s*"?sep=.?"?\s*$', re.IGNORECASE)
"""The line a spreadsheet writes first to name a file's delimiter (`sep=;`)."""


def _preamble(lines: list[str]) -> int:
    """How many lines come before the table: lines without any delimiter (a vendor's address,
    as CryptoDataDownload writes above its header, or a title) followed by a delimited line,
    and a spreadsheet's `sep=;` line.

    >>> _preamble(["https://www.CryptoDataDownload.com", "unix,date,open", "1,2,3"])
    1
    >>> _preamble(["sep=;", "Date;Open", "2024-01-02;1,5"])
    1
    >>> _preamble(["ts,open", "1,2"]), _preamble(["price", "1.5"])
    (0, 0)
    """
    for i, line in enumerate(lines[: PREAMBLE_LINES + 1]):
        if any(d in line for d in DELIMITERS) and not _SEPARATOR_HINT.match(line):
            return i
    return 0  # a table of one column, or nothing delimited: read from the top as before


def _delimiter(lines: list[str]) -> tuple[str, str]:
    """The file's delimiter and decimal mark, from its first lines (from its header on). The
    delimiter is a comma unless the header has none and has one of the others (spreadsheets
    in many locales write semicolons); the decimal mark is a comma only where the delimiter is
    not and a field of the first rows is written so (`42280,5`, as those spreadsheets write
    numbers)."""
    header = lines[0] if lines else ""
    sep = next((d for d in DELIMITERS if d in header), ",")
    fields = [f.strip() for row in csv.reader(lines[1:], delimiter=sep) for f in row]
    if sep != ",":
        comma = any(_DECIMAL_COMMA.match(f) for f in fields)
    else:  # in a comma-separated file only a quoted `16.751,64` says so: `1,234` may be US
        comma = any(_GROUPED_DECIMAL_COMMA.match(f) for f in fields)
    return sep, "," if comma else "."


_DECIMAL_COMMA = re.compile(r"^[-+]?(\d{1,3}(\.\d{3})+|\d+),\d+$")
"""A decimal comma, after thousands grouped by dots or not: `142,5`, `42.580,5`."""
_GROUPED_DECIMAL_COMMA = re.compile(r"^[-+]?\d{1,3}(\.\d{3})+,\d+$")
"""A decimal comma after thousands grouped by dots, `16.751,64`: a European number in any
file (a quote site's German download quotes it in a comma-separated file)."""
_NUMBERS = ("price", "size", "open", "high", "low", "close", "volume")


def _plain(value: Any) -> Any:
    """A decimal as a float and a day as its midnight UTC; any other value as it is."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def _plain_values(frame: pd.DataFrame) -> pd.DataFrame:
    """rtml's columns of the types file formats have beyond numbers, times and text, as a
    replay reads them: decimals (Parquet's `decimal128`) as floats, days (Parquet's `date32`)
    as their midnight UTC, and pandas' nullable numbers, flags and text with their gaps as
    NaN or None. Each had its every row refused (`price must be a number, got Decimal`)."""
    for name in set(frame.columns) & {*_NUMBERS, *TEXT_COLUMNS, "ts"}:
        column = frame[name]
        if isinstance(column.dtype, pd.api.extensions.ExtensionDtype):
            if column.dtype.kind in "iuf" and name not in TEXT_COLUMNS:  # an id stays whole
                frame[name] = column.astype("float64")
            elif not isinstance(column.dtype, pd.DatetimeTZDtype):
                frame[name] = column.astype(object).where(column.notna(), None)
        elif column.dtype == object and any(
            isinstance(v, Decimal | date)  # a format's column is of one type: its first tell
            for v in column.dropna().head(20)
        ):
            frame[name] = column.map(_plain)
    return frame


def _decimal_comma(value: Any) -> Any:
    """`142,5` as `142.5` and `42.580,5` as `42580.5`, in a file whose decimal mark is a
    comma; anything else as it is."""
    if isinstance(value, str) and _DECIMAL_COMMA.match(value.strip()):
        return value.strip().replace(".", "").replace(",", ".")
    return value


LOCAL: dict[str, tuple[str, ...]] = {
    "ts": ("datum", "fecha", "data", "zeit"),
    "open": ("eröffnung", "eröffn.", "erster", "ouverture", "ouv.", "apertura", "abertura"),
    "high": ("hoch", "plus haut", "máximo", "maximo", "máxima", "massimo", "höchst"),
    "low": ("tief", "plus bas", "mínimo", "minimo", "mínima", "tiefst"),
    "close": ("schluss", "schlusskurs", "clôture", "cloture", "cierre", "chiusura", "fechamento"),
    "price": ("zuletzt", "dernier", "último", "ultimo"),
    "volume": ("volumen", "umsatz", "volume (stück)"),
}
"""Column names of spreadsheets and quote sites in German, French, Spanish, Italian and
Portuguese (`Datum, Eröffnung, Hoch, Tief, Schluss, Volumen`; a quote site's `Zuletzt`,
`Dernier` or `Último` is its price, the close of a candle file)."""

ALIASES: dict[str, tuple[str, ...]] = {
    "ts": (
        "timestamp",
        "datetime",
        "date",
        "time",
        "open_time",
        "open time",
        "unix",
        "unix timestamp",
        "starttime",
        "start time",
        "start",
        "time_period_start",
        "transact_time",
        "trade_time",
        "tradetime",
        "ts_event",
        "sip_timestamp",
        "participant_timestamp",
        "time_exchange",
        "transacttime",
        *LOCAL["ts"],
    ),
    "symbol": (
        "ticker",
        "pair",
        "instrument",
        "product_id",
        "name",
        "instid",
        "inst_id",
        "instrument_id",
        "market",
    ),
    "price": (
        "last",
        "last price",
        "settle",
        "trade price",
        "px",
        "last_px",
        "lastpx",
        "trade_px",
        *LOCAL["price"],
    ),
    "open": LOCAL["open"],
    "high": LOCAL["high"],
    "low": LOCAL["low"],
    "close": ("adj close", "adj_close", "adjclose", "adjusted close", *LOCAL["close"]),
    "size": ("qty", "quantity", "amount", "last_qty", "lastqty", "sz", "trade_size"),
    "volume": ("vol", "vol.", "tickvol", *LOCAL["volume"]),
    "trade_id": (
        "id",
        "tid",
        "trade id",
        "tradeid",
        "trdmatchid",
        "match_id",
        "matchid",
        "execid",
        "exec_id",
        "agg_trade_id",
        "aggtradeid",
    ),
    "side": ("taker_side", "takerside", "direction", "aggressor_side", "aggressor"),
}
"""What exchanges and data vendors call rtml's columns, tried (in this order) when a file has
no column of rtml's name and `--column` maps none: Yahoo's and Stooq's `Date`, Binance's
`open_time`, Kraken's `qty`, the ticker column `Name` of datasets of many stocks, and the
`<TICKER>`, `<DATE>`, `<TIME>` and `<VOL>` of Stooq's and MetaTrader's text exports, and the
`Vol.` of quote sites' history downloads, CryptoDataDownload's `Unix`, Bybit's `startTime`,
BitMEX's `trdMatchID`; `Last` or `Settle` (futures' candles) is the close of a candle file
(`_price_as_close`), and `Adj Close` the close where a file gives no other. Besides these,
`openPrice`, `Open Price` or `price_open` is the open (and so for high, low and close), and
the first `Volume BTC` or `Volume_(BTC)` is the volume (`_spelled_apart`). Trade files:
Binance's `transact_time` and `agg_trade_id` (its `is_buyer_maker` gives the side, see
`_trades_without_id_or_side`), Databento's `ts_event`, Polygon's `sip_timestamp`, CoinAPI's
`time_exchange`, and an `aggressor_side`."""


def _spelled_apart(loose: Mapping[str, Any], name: str) -> Any | None:
    """A column that is `name` spelled with more words, as exchanges and vendors write OHLC and
    volume: `openPrice`, `Open Price`, `price_open` for `open`; `Volume BTC`, `Volume_(BTC)`,
    `volume (base)` for `volume` (the first of them: the base currency's comes first).

    >>> _spelled_apart({"openprice": "openPrice", "closetime": "closeTime"}, "open")
    'openPrice'
    >>> _spelled_apart({"closetime": "closeTime"}, "close") is None
    True
    >>> _spelled_apart({"volume btc": "Volume BTC", "volume usdt": "Volume USDT"}, "volume")
    'Volume BTC'
    """
    if name in ("open", "high", "low", "close"):
        for key, column in loose.items():
            bare = re.sub(r"[^a-z]", "", key)
            if bare in (name + "price", "price" + name):
                return column
    if name == "volume":
        return next((c for k, c in loose.items() if re.match(r"volume[\s_(\-]", k)), None)
    return None


_ABBREVIATED = re.compile(r"^(\d[\d,]*(?:\.\d+)?)\s*([KMB])$", re.IGNORECASE)
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9}
_NO_VOLUME = frozenset({"-", "\u2014", "n/a", ""})


def _volume_text(value: Any, decimal: str) -> Any:
    """Quote sites' volumes: `57.30K`, `1.2M` and `3B` as numbers, and `-` (nothing traded,
    or not reported) as none; anything else as it is (and refused as before)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in _NO_VOLUME:
        return math.nan
    if found := _ABBREVIATED.match(text):
        digits = found[1].replace(",", ".") if decimal == "," else found[1].replace(",", "")
        with contextlib.suppress(ValueError):
            return float(digits) * _SCALE[found[2].lower()]
    return value


def _price_as_close(frame: pd.DataFrame) -> pd.DataFrame:
    """Quote sites' history downloads (`Date, Price, Open, High, Low, Vol., Change %`) give
    the close as `Price`: in a file of candles, with no close, no trade id and no side, it is
    the close."""
    columns = set(frame.columns)
    if {"price", "open", "high", "low"} <= columns and not columns & {"close", "trade_id", "side"}:
        return frame.rename(columns={"price": "close"})
    return frame


def _loose(columns: Iterable[Any]) -> dict[str, Any]:
    """Columns by their name up to case, surrounding spaces, a byte-order mark and angle
    brackets (`<CLOSE>`); the first of two that look alike wins."""
    return {_loose_name(c): c for c in reversed(list(columns))}


def _loose_name(column: Any) -> str:
    return str(column).strip().lstrip("\ufeff").strip().strip("<>").strip().lower()


def _in_order(columns: Iterable[Any]) -> dict[str, Any]:
    """Columns by their loose name (as `_loose`), in the file's order."""
    return {_loose_name(c): c for c in columns}


_TIME_NAME = re.compile(r"time|date|(^|[\s_])ts($|[\s_])")
_NOT_THE_TIME = re.compile(r"close|end|recv|receiv|update|modif|expir|settle")


def _named_as_time(found: Iterable[Any]) -> Any | None:
    """The first column named as a time (`Gmt time`, `Local time`, `event_time`,
    `timestamp_utc`, `ts_exchange`) when none of rtml's `ALIASES` is there; not one named as
    another moment (a candle's close time, a time received, updated or expiring).

    >>> _named_as_time(["Gmt time", "Ask"]), _named_as_time(["close_time", "exec_ts", "px"])
    ('Gmt time', 'exec_ts')
    >>> _named_as_time(["price", "closeTime"]) is None
    True
    """
    for column in found:
        name = _loose_name(column)
        if _TIME_NAME.search(name) and not _NOT_THE_TIME.search(name):
            return column
    return None


def _rtml_names(found: Iterable[Any], mapping: Mapping[str, str]) -> dict[Any, str]:
    """The file's columns renamed to rtml's: mapped ones as mapped, and otherwise a column
    whose name is rtml's up to case and surrounding spaces (`Close`, ` volume`), or else one
    of its `ALIASES`."""
    found = list(found)
    loose = _loose(found)
    names: dict[Any, str] = {}
    for name in dict.fromkeys([*TRADE_COLUMNS, *CANDLE_COLUMNS]):
        column = mapping.get(name, name)
        if column not in found:
            column = loose.get(column.strip().lower(), column)
        if column not in found and name not in mapping:
            aliases = ALIASES.get(name, ())
            apart = name == "ts" and "date" in loose and "time" in loose
            if apart:
                aliases = aliases[:2]  # a date and a time of day: `_date_and_time` joins them
            column = next((loose[a] for a in aliases if a in loose), column)
            if column not in found:
                column = _spelled_apart(_in_order(found), name) or column
            if column not in found and name == "ts" and not apart:
                column = _named_as_time(found) or column
        if column in found and column not in names:
            names[column] = name
    return names


def _date_and_time(frame: pd.DataFrame) -> pd.DataFrame:
    """Intraday exports (Stooq's, MetaTrader's) give the day and the time of day in two
    columns, `Date` and `Time`: they are one time. Read as the date alone, every bar of a day
    would be one candle given many times."""
    if "ts" in frame.columns:
        return frame
    loose = _loose(frame.columns)
    if "date" in loose and "time" in loose:
        day, clock = frame[loose["date"]].astype(str), frame[loose["time"]].astype(str)
        frame = frame.assign(ts=day.str.strip() + " " + clock.str.strip())
    return frame


_NUMERIC_DAY = re.compile(r"^\s*(\d{1,2})([./-])(\d{1,2})\2(\d{4})(?=$|[\sT])")
"""A day written with its year last: 31/01/2024, 01/31/2024, 31.01.2024, 01-31-2024."""


def _day_order(times: pd.Series) -> Literal["dmy", "mdy"] | None:
    """Whether the file's days written with the year last are D/M/Y or M/D/Y, as the file
    itself tells: a first part above 12 is a day (31/01/2024, as Europe writes), a second part
    above 12 is a day too (01/31/2024, as the US does). None where no day tells (every part
    12 or below) or the file says both."""
    parts = times.astype(str).str.extract(_NUMERIC_DAY)
    written = parts[0].notna()
    if not written.any():
        return None
    first, second = parts[0][written].astype(int), parts[2][written].astype(int)
    day_first, month_first = bool((first > 12).any()), bool((second > 12).any())
    if day_first == month_first:
        return None
    return "dmy" if day_first else "mdy"


def _iso_days(times: pd.Series, order: Literal["dmy", "mdy"], same_only: bool = False) -> pd.Series:
    """`times` with each day written with its year last rewritten YYYY-MM-DD, in `order`
    (with `same_only`, only the days whose day and month are one number: 01.01.2025 is that
    day either way); everything else as it was (and refused or read as before)."""

    def iso(value: Any) -> Any:
        found = _NUMERIC_DAY.match(value) if isinstance(value, str) else None
        if found is None:
            return value
        first, _, second, year = found.groups()
        if same_only and int(first) != int(second):
            return value
        day, month = (first, second) if order == "dmy" else (second, first)
        return f"{year}-{int(month):02d}-{int(day):02d}{value[found.end() :]}"

    return times.map(iso)


def _days_in_order(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Days written D/M/Y or M/D/Y (spreadsheets' and quote sites' exports) read in the order
    the file shows. Where nothing in the file tells, each such row is refused as ambiguous,
    unless its day and month are one number (a file of one day, 01.01.2025)."""
    if "ts" not in frame.columns or frame["ts"].dtype != object:
        return frame
    order = _day_order(frame["ts"])
    if order is None:  # the days no order is needed for are read; the rest are refused
        return frame.assign(ts=_iso_days(frame["ts"], "dmy", same_only=True))
    log.info("%s: days are read as %s (a day above 12 says so)", path, order.upper())
    return frame.assign(ts=_iso_days(frame["ts"], order))


TIME_FORMATS = (
    "%Y-%m-%d %H:%M",  # an hour of one digit (9:30), which ISO-8601 does not allow
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %I:%M %p",  # 9:30 AM, as US spreadsheets write times
    "%Y-%m-%d %I:%M:%S %p",
    "%b %d, %Y",  # Jan 02, 2024, as quote sites write days
    "%B %d, %Y",  # January 2, 2024
    "%d-%b-%Y",  # 02-Jan-2024
    "%d %b %Y",  # 02 Jan 2024
    "%d-%b-%Y %H:%M:%S",
    "%d %b %Y %H:%M:%S",
    "%b %d, %Y %I:%M %p",
)
"""Times a replay file may be written in that are not ISO-8601 (after `_days_in_order` has
written days with the year last as YYYY-MM-DD), each tried on a sample of the file; the one
that reads the most of it (the first of equals, and 90% at least) reads the whole column, as
UTC (a trailing `UTC` or `GMT` is passed over)."""

_TIME_SAMPLE = 50


def _times_in_known_formats(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A file whose times are text rtml does not read as ISO-8601 or an epoch number, but one
    of `TIME_FORMATS` reads: its times become epoch seconds, the whole column at once. A time
    that format does not read is left as it was, and refused on its own with its reason.

    >>> frame = pd.DataFrame({"ts": ["Jan 02, 2024"] * 9 + ["Jan 03, 2024", "soon"]})
    >>> _times_in_known_formats(frame, Path("x.csv"))["ts"].tolist()[-3:]
    [1704153600.0, 1704240000.0, 'soon']
    """
    if "ts" not in frame.columns or frame["ts"].dtype != object:
        return frame
    given = frame["ts"].dropna()
    sample = [v.strip() for v in given.head(_TIME_SAMPLE) if isinstance(v, str)]
    if not sample or sum(ts_or_none(v) is None for v in sample) * 2 <= len(sample):
        return frame  # rtml reads these times as they are
    probe = pd.Series(sample).str.replace(r"\s(?:UTC|GMT)$", "", regex=True).str.rstrip()
    reads = {
        pattern: int(pd.to_datetime(probe, format=pattern, errors="coerce").notna().sum())
        for pattern in TIME_FORMATS
    }
    pattern = max(reads, key=lambda p: reads[p])  # the first of the best, in order
    if reads[pattern] < 0.9 * len(sample):
        return frame  # no known format: each time is refused with its reason
    text = (
        frame["ts"]
        .astype(str)
        .str.strip()
        .str.replace(r"\s(?:UTC|GMT)$", "", regex=True)
        .str.rstrip()
    )
    moments = pd.to_datetime(text, format=pattern, errors="coerce")
    seconds = (moments - pd.Timestamp(0)) / pd.Timedelta(seconds=1)
    log.info("%s: times are read as %s (UTC)", path, pattern)
    return frame.assign(ts=seconds.astype(object).where(moments.notna(), frame["ts"]))


_BIDS = ("bid", "bid price", "bidprice", "bid_price", "best_bid", "bestbid", "bid quote")
_ASKS = ("ask", "ask price", "askprice", "ask_price", "best_ask", "bestask", "ask quote")
_QUOTE_SIZES = (
    ("bidvolume", "bid volume", "bid_volume", "bid size", "bidsize", "bid_size", "bid_qty"),
    ("askvolume", "ask volume", "ask_volume", "ask size", "asksize", "ask_size", "ask_qty"),
)


def _quotes_as_mid(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A file of quotes, not trades (forex ticks as Dukascopy and TrueFX give them: a time, a
    bid and an ask): each quote is a trade at the mid price, of the size quoted at both sides
    (none where the file gives no sizes). A bid or ask that is not a number makes its row's
    price refused, with its reason."""
    if "price" in frame.columns or not {"ts"} <= set(frame.columns):
        return frame
    loose = _loose(frame.columns)
    bid = next((loose[n] for n in _BIDS if n in loose), None)
    ask = next((loose[n] for n in _ASKS if n in loose), None)
    if bid is None or ask is None or frame.columns.intersection(["open", "close"]).size:
        return frame
    log.info("%s: quotes, read as trades at the mid of %r and %r", path, bid, ask)
    mid = pd.to_numeric(frame[bid], errors="coerce") + pd.to_numeric(frame[ask], errors="coerce")
    size, negative = pd.Series(0.0, frame.index), []
    for names in _QUOTE_SIZES:
        if (column := next((loose[n] for n in names if n in loose), None)) is not None:
            quoted = pd.to_numeric(frame[column], errors="coerce")
            size = size + quoted
            negative.append(quoted.where(quoted < 0))
    for quoted in negative:  # a row with a side quoted below zero is refused for that side's
        size = size.mask(quoted.notna(), quoted)
    return frame.assign(price=mid / 2, size=size if "size" not in frame.columns else frame["size"])


def _trades_without_id_or_side(frame: pd.DataFrame) -> pd.DataFrame:
    """A file of trades often gives no trade id (Kraken's, a vendor's time and sales) or no
    side, and some call the size `volume`: a file with a time and a price, a size or volume,
    and no candle columns is trades. Sides written `Buy`, `SELL`, `b` or `s` are read too."""
    columns = set(frame.columns)
    if not {"ts", "price"} <= columns or columns & {"open", "high", "low"}:
        return frame
    if "size" not in columns and "volume" in columns:
        frame = frame.rename(columns={"volume": "size"})
    if "size" not in frame.columns:
        return frame
    if "trade_id" not in frame.columns:
        frame = frame.assign(trade_id=row_ids(frame))
    loose = _loose(frame.columns)
    maker = loose.get("is_buyer_maker", loose.get("isbuyermaker"))
    if "side" not in frame.columns and maker is not None:
        # Binance's: the buyer made the market, so the taker sold
        made = frame[maker].astype(str).str.strip().str.lower()
        frame = frame.assign(side=made.map({"true": "sell", "false": "buy"}).fillna(frame[maker]))
    if "side" not in frame.columns:
        frame = frame.assign(side="buy")  # not given (rtml does not use a side)
    else:
        sides = frame["side"].astype(str).str.strip().str.lower()
        known = sides.map(SIDE_SPELLINGS)
        frame = frame.assign(side=known.where(known.notna(), frame["side"]))
    return frame


_EXCHANGE_FILE = re.compile(
    r"^([A-Za-z0-9]+)(-(\d+(mo|[smhdw])|trades|aggTrades)-\d{4}-\d{2}(-\d{2})?|_(MN|[MHDW])?\d+"
    r"|_(Candlestick|Ticks)_.*)$"
)
"""Exchanges' names of candle and trade files: data.binance.vision's BTCUSDT-1m-2024-01,
BTCUSDT-1h-2024-01-15, BTCUSDT-1mo-2024-01, BTCUSDT-trades-2024-01-15 and
BTCUSDT-aggTrades-2024-01, Kraken's XBTUSD_1 (its candle length in minutes), MetaTrader's
EURUSD_M1, EURUSD_H4 and EURUSD_D1, Dukascopy's EURUSD_Candlestick_1_M_BID_01.01.2025-... and
EURUSD_Ticks_01.01.2025-..."""


_HISTDATA_FILE = re.compile(r"^DAT_[A-Z]+_([A-Z0-9]+)_(T|M1)(_|$)")
"""HistData's names of tick and minute files: DAT_ASCII_EURUSD_T_202501, DAT_MT_EURUSD_M1_2025."""


def _symbol_of(path: Path) -> str:
    """The instrument a file of one instrument is named after: `MSFT.csv` is MSFT, Binance's
    `BTCUSDT-1m-2024-01.csv` is BTCUSDT (each month's file the same symbol), and Kraken's
    `XBTUSD_1.csv` is XBTUSD.

    >>> names = ("MSFT.csv", "BTCUSDT-1mo-2024-01.zip", "XBTUSD_1.csv", "ETHBTC-aggTrades-2024-01")
    >>> [_symbol_of(Path(n)) for n in names]
    ['MSFT', 'BTCUSDT', 'XBTUSD', 'ETHBTC']
    >>> _symbol_of(Path("EURUSD_Candlestick_1_M_BID_01.01.2025-31.01.2025.csv"))
    'EURUSD'
    >>> [_symbol_of(Path(n)) for n in ("DAT_ASCII_EURUSD_T_202501.csv", "DAT_MT_GBPUSD_M1_2024")]
    ['EURUSD', 'GBPUSD']
    """
    stem = path.name.split(".")[0]
    if histdata := _HISTDATA_FILE.match(stem):
        return histdata[1]
    found = _EXCHANGE_FILE.match(stem)
    return found[1] if found else stem


def _one_instrument(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A file of one instrument's candles or trades often has no symbol column (Yahoo's,
    Stooq's and Binance's downloads): its symbol is the file's name (`MSFT.csv` is MSFT). A
    candle file without volume (an index, a currency) has candles without volume."""
    rest = set(frame.columns)
    if "symbol" not in rest and (
        set(TRADE_COLUMNS) - {"symbol"} <= rest
        or set(CANDLE_COLUMNS) - {"symbol", "volume"} <= rest
    ):
        frame = frame.assign(symbol=_symbol_of(path))
    if set(CANDLE_COLUMNS) - {"volume"} <= set(frame.columns) and "size" not in frame.columns:
        volume = frame["volume"] if "volume" in frame.columns else pd.Series(0.0, frame.index)
        frame = frame.assign(volume=volume.where(volume.notna(), 0.0))  # not reported: none
    return frame


def read_table(path: Path, columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A replay file with rtml's column names (`columns` maps them to the file's own).

    Symbols, trade ids and sides are text even when they look like numbers (a ticker such
    as 7203, an id column of integers). A file that cannot be read says so, with what to do.
    Lines with more fields than the header are left out (`replay` refuses each of them)."""
    return _read(path, columns)[0]


_TOO_MANY_FIELDS = re.compile(r"Skipping line (\d+): expected (\d+) fields, saw (\d+)")


def _ticker_levels(head: list[list[str]]) -> bool:
    """Whether a file begins as yfinance writes a download: a line of fields (`Price, Close,
    High, ...`), a line of tickers (`Ticker, AAPL, AAPL, ...`) and a line naming the index
    (`Date,,,...`), before the rows.

    >>> _ticker_levels([["Price", "Close"], ["Ticker", "AAPL"], ["Date", ""]])
    True
    >>> _ticker_levels([["Date", "Close"], ["2024-01-02", "1.5"], ["2024-01-03", "1.6"]])
    False
    """
    if len(head) < 3 or len({len(line) for line in head}) != 1:
        return False
    price, ticker, index = ([f.strip().strip('"').lower() for f in line] for line in head)
    return (
        price[0] == "price"
        and ticker[0] == "ticker"
        and bool(index[0])
        and not any(index[1:])
        and all(ticker[1:])
    )


def _by_ticker(raw: pd.DataFrame) -> pd.DataFrame:
    """A yfinance download (`_ticker_levels`) as one frame of rows: each ticker's columns
    under their field's name, its symbol the ticker, the time the index's column (`Date`).
    A download of several tickers becomes the rows of each in turn."""
    fields = [str(f).strip() for f in raw.iloc[0]]
    tickers = [str(t).strip() for t in raw.iloc[1]]
    index = str(raw.iloc[2, 0]).strip()
    body = raw.iloc[3:].reset_index(drop=True)
    parts = []
    for ticker in dict.fromkeys(tickers[1:]):
        part = pd.DataFrame({index: body[0]})
        for i in range(1, len(fields)):
            if tickers[i] == ticker:
                part[fields[i]] = body[i]
        parts.append(part.assign(symbol=ticker))
    return pd.concat(parts, ignore_index=True)


def _read_delimited(
    path: Path, mapping: Mapping[str, str]
) -> tuple[pd.DataFrame, dict[Any, str], str, list[BadRecord]]:
    """A delimited file as `_read` reads it: its frame, its columns' rtml names, its decimal
    mark, and a BadRecord for each line with more fields than the header."""
    layout = TextLayout.of(path)
    head = _first_lines(path, layout.skip + 3, layout.encoding)[layout.skip :]
    if _ticker_levels([line.rstrip("\r\n").split(layout.sep) for line in head]):
        raw, refused = layout.rows(path, header=None, dtype=str)
        frame = _by_ticker(raw)
        return frame, _rtml_names(frame.columns, mapping), layout.decimal, refused
    first = layout.read(path, nrows=1, header=None, dtype=str)
    header = layout.read(path, nrows=0).columns
    if values_only(first.iloc[0] if len(first) else []):
        refused = []

        def read(names: tuple[str, ...]) -> pd.DataFrame:
            frame, told = layout.rows(path, header=None, names=list(names), dtype={"trade_id": str})
            refused[:] = told  # the layout read last is the one kept
            return frame

        frame = by_shape(path, read, list(first.iloc[0]))
        names = {c: c for c in frame.columns if c in (*CANDLE_COLUMNS, *TRADE_COLUMNS)}
        return frame, names, layout.decimal, refused
    names = _rtml_names(header, mapping)
    text = {column: str for column, name in names.items() if name in TEXT_COLUMNS}
    if "ts" not in names.values():
        # a day and a time of day apart are text: 090000 read as a number is 90000
        loose = _loose(header)
        text.update({loose[n]: str for n in ("date", "time") if n in loose})
    try:
        frame, refused = layout.rows(path, dtype=text, decimal=layout.decimal)
    except pd.errors.ParserError as exc:
        if "EOF inside string" not in str(exc):
            raise
        # a quote never closed swallows the rest of the file: read quotes as characters and
        # take them off each field's ends, so the rows after it are read (a field quoted for
        # its commas becomes a line of too many fields, refused on its own)
        log.warning("%s: a quote is never closed (%s); quotes are read as text", path, exc)
        frame, refused = layout.rows(
            path, dtype=str, decimal=layout.decimal, quoting=csv.QUOTE_NONE
        )
        frame.columns = [str(c).strip('"') for c in frame.columns]
        frame = frame.apply(lambda column: column.str.strip('"'))  # numbers as text
    if layout.decimal == ",":  # a column with a dot somewhere stays text: read its commas
        for column, name in names.items():
            if name in _NUMBERS and frame[column].dtype == object:
                frame[column] = frame[column].map(_decimal_comma)
    return frame, names, layout.decimal, refused


def _read(
    path: Path, columns: Mapping[str, str] | None = None
) -> tuple[pd.DataFrame, list[BadRecord]]:
    """`read_table`'s frame, and a BadRecord for each line of the file that has more fields
    than its header: one such line made the whole file unreadable."""
    refused: list[BadRecord] = []
    if not path.exists():
        raise ConfigError(f"replay file {path} does not exist")
    mapping = dict(columns or {})
    kind = file_kind(path)
    decimal = "."
    symbol: str | None = None
    try:
        if kind in ("parquet", "arrow"):
            frame = pd.read_parquet(path) if kind == "parquet" else pd.read_feather(path)
            names = _rtml_names(frame.columns, mapping)
        elif kind in ("json", "excel"):
            rows, symbol = _read_json(path) if kind == "json" else (_read_excel(path), None)
            if all(isinstance(c, int) for c in rows.columns):
                frame = by_shape(
                    path,
                    lambda names: rows.set_axis(list(names), axis=1),
                    [str(v) for v in rows.iloc[0]],
                )
                names = {c: c for c in frame.columns if c in (*CANDLE_COLUMNS, *TRADE_COLUMNS)}
            else:
                frame, names = rows, _rtml_names(rows.columns, mapping)
        else:
            frame, names, decimal, refused = _read_delimited(path, mapping)
    except (
        ValueError,
        OSError,
        EOFError,  # a compressed file cut short
        lzma.LZMAError,
        UnicodeDecodeError,
        pd.errors.ParserError,
        zipfile.BadZipFile,
    ) as exc:
        # pandas' and pyarrow's read errors (empty, binary, truncated, not Parquet) are these
        raise ConfigError(
            f"replay file {path} could not be read ({type(exc).__name__}: {str(exc)[:200]}); "
            "give a UTF-8 CSV with a header row, JSON, a Parquet or an Arrow file"
        ) from None
    if not {"price", "open", "close"} & set(names.values()):  # an API's one-letter fields
        names.update({c: n for c, n in one_letter_names(frame.columns).items() if c not in names})
    if symbol is not None and "symbol" not in names.values():
        frame = frame.assign(symbol=symbol)  # the instrument an API's response names
    frame = _price_as_close(_date_and_time(_plain_values(frame.rename(columns=names))))
    frame = _trades_without_id_or_side(_quotes_as_mid(frame, path))
    if "volume" in frame.columns and frame["volume"].dtype == object:
        frame["volume"] = frame["volume"].map(lambda v: _volume_text(v, decimal))
    frame = _times_in_known_formats(_days_in_order(_one_instrument(frame, path), path), path)
    for name in set(TEXT_COLUMNS) & set(frame.columns):
        if frame[name].dtype.kind in "iub":
            frame[name] = frame[name].astype(str)
    if refused:
        log.warning("%s: %d line(s) with more fields than the header", path, len(refused))
    return frame, refused


ROWS_AT_ONCE = 20_000
"""A replay turns this many rows at a time into records: the file is held as columns, and
only these rows as Python objects (each several times its size as a column's)."""


def _rows(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    for start in range(0, len(frame), ROWS_AT_ONCE):
        chunk: list[dict[str, Any]] = frame.iloc[start : start + ROWS_AT_ONCE].to_dict("records")  # type: ignore[assignment]
        yield from chunk


def replay(
    path: Path, columns: dict[str, str] | None = None, candle_seconds: int = 60
) -> Iterator[Trade | BadRecord]:
    """Trades from a CSV or Parquet file of trades or of OHLCV candles.

    Trades need the columns `symbol, trade_id, price, size, side, ts`; candles need
    `symbol, ts, open, high, low, close, volume` where `ts` is the candle's start. `ts` is epoch
    seconds or ISO-8601. `columns` maps these names to the file's own (e.g. {"size": "qty"}).
    A candle becomes four trades (open, high, low, close) inside its window, so the candle
    builder reproduces its OHLC and volume. Bad rows are yielded as BadRecord, not dropped.
    """
    frame, refused = _read(path, columns)
    yield from refused
    if set(TRADE_COLUMNS) <= set(frame.columns):
        frame = in_event_time(frame)  # an export written newest first is the same market
        for record in _rows(frame[list(TRADE_COLUMNS)]):
            try:
                yield parse_trade(record)
            except BadRecord as exc:
                yield exc
        return
    if not set(CANDLE_COLUMNS) <= set(frame.columns):
        raise ConfigError(
            f"{path}: columns {sorted(map(str, frame.columns))} are neither trades "
            f"{TRADE_COLUMNS} nor candles {CANDLE_COLUMNS}; map yours with --column "
            "NAME=FILE_COLUMN"
        )
    # each time parsed once; only an unreadable one is parsed again, for its BadRecord
    frame = in_event_time(frame)
    rows = _rows(frame[[*CANDLE_COLUMNS, "_start"]])
    at, given = math.nan, set[Any]()  # the symbols with a candle at `at` (rows are in time order)
    for row in rows:
        # a candle is good or bad as a whole: one BadRecord for it, never part of a candle
        try:
            start = row["_start"] if not math.isnan(row["_start"]) else parse_ts(row["ts"])
            if start != at:
                at, given = start, set()
            if row["symbol"] in given:
                # its four trades would land in the same window: twice the volume, and the
                # two candles' prices merged into one
                raise BadRecord(
                    "duplicate", f"a second {row['symbol']!r:.60} candle at {row['ts']!r:.40}"
                )
            given.add(row["symbol"])
            volume = number(row, "volume", positive=False, text=True)  # a stray header row is text
            # the four trades stay inside the window the candle starts in, even for a start
            # that is not on a window boundary (a session opening at 09:30, a zone offset)
            window_end = (math.floor(start / candle_seconds) + 1) * candle_seconds
            quarter = (window_end - start) / 4
            prices = (row["open"], row["high"], row["low"], row["close"])
            trades = [
                parse_trade(
                    {
                        "symbol": row["symbol"],
                        # named by the candle, not its row: the next day's file has rows
                        # 0, 1, ... too, and its trades would be dropped as seen before
                        "trade_id": f"c{start:.3f}-{j}",
                        "price": price,
                        "size": volume / 4,
                        "side": "buy",
                        "ts": start + j * quarter,
                    }
                )
                for j, price in enumerate(prices)
            ]
        except BadRecord as exc:
            yield exc
            continue
        yield from trades


@dataclass(frozen=True)
class CandleProfile:
    """What a candle file says about itself."""

    seconds: int  # the most common step between a symbol's consecutive candles
    gaps: float  # the share of steps longer than that: closed sessions, weekends, holidays

    @property
    def gap_policy(self) -> str:
        return "skip" if self.gaps > 0.01 else "flat"


def in_event_time(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` sorted by its parsed `ts` (text sorts "999" after "1000"), stably, with the
    parsed time in `_start`; rows whose time cannot be read come first, as NaN."""
    frame = frame.reset_index(drop=True)
    frame = frame.assign(_start=frame["ts"].map(ts_or_none).astype(float))
    return frame.sort_values("_start", na_position="first", kind="stable")


def candle_profile(path: Path, columns: dict[str, str] | None = None) -> CandleProfile | None:
    """The candle length and the gaps of a candle file; None for a file of trades.

    >>> import tempfile
    >>> days = ["2024-01-0%d" % d for d in (1, 2, 3, 4, 5, 8, 9)]  # Mon-Fri, Mon, Tue
    >>> rows = ["symbol,ts,open,high,low,close,volume", *(f"X,{d},1,1,1,1,1" for d in days)]
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write(chr(10).join(rows))
    >>> candle_profile(Path(f.name))
    CandleProfile(seconds=86400, gaps=0.16666666666666666)
    """
    frame = read_table(path, columns)
    if set(TRADE_COLUMNS) <= set(frame.columns) or not set(CANDLE_COLUMNS) <= set(frame.columns):
        return None
    steps: list[float] = []
    for _, rows in frame.groupby("symbol", sort=False):
        stamps = sorted({ts for v in rows["ts"] if (ts := ts_or_none(v)) is not None})
        steps.extend(b - a for a, b in itertools.pairwise(stamps))
    if not steps:
        return None
    seconds = int(statistics.mode(round(step) for step in steps))
    if seconds <= 0:
        return None
    return CandleProfile(seconds, sum(step > seconds * 1.5 for step in steps) / len(steps))


def paced(trades: Iterable[Trade | BadRecord], speed: float) -> Iterator[Trade | BadRecord]:
    """Yield trades at `speed` times their event-time pace (0: as fast as possible).

    Bad records pass straight through, for the caller to dead-letter.
    """
    if speed <= 0:
        yield from trades
        return
    first_event: float | None = None
    began = time.monotonic()
    for trade in trades:
        if isinstance(trade, BadRecord):
            yield trade
            continue
        if first_event is None:
            first_event = trade.ts
        wait = (trade.ts - first_event) / speed - (time.monotonic() - began)
        if wait > 0:
            time.sleep(wait)
        yield trade
