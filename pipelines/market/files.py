"""Reading market files for replay: rtml's canonical format, or a vendor's by a named preset.

A file is read as it is declared, never guessed: in the canonical format (rtml's column names,
or the file's mapped to them with `--column NAME=COLUMN`) or by a preset of `presets.py`
(`--format NAME`). `--format auto` tries the presets in order and says which one read the file.
pandas reads CSV (compressed as pandas reads it: .gz, .bz2, .xz, .zst, a .zip of one file),
Parquet, Arrow and JSON; charset-normalizer names the encoding of a text file that is not
UTF-8. Rows that cannot be read are yielded as `BadRecord`s with their reason, never dropped;
a file that cannot be read at all is a `ConfigError` saying what to give instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from rtml.errors import ConfigError
from rtml.records import BadRecord, Trade, in_years, parse_trade

from .presets import EPOCH, ISO, PRESETS, Preset

log = logging.getLogger(__name__)

TRADE_COLUMNS = ("symbol", "trade_id", "price", "size", "side", "ts")
CANDLE_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
OPTIONAL = frozenset({"symbol", "trade_id", "side", "volume"})
"""Columns a file may leave out: the symbol is then the file's name, a trade's id its line,
its side the preset's, and a candle's volume zero."""

CANONICAL = "canonical"
AUTO = "auto"
FORMATS = (CANONICAL, AUTO, *PRESETS)

_KINDS = {".parquet": "parquet", ".pq": "parquet", ".feather": "arrow", ".arrow": "arrow"}
_KINDS |= {".json": "json", ".csv": "csv", ".txt": "csv", ".tsv": "csv", ".zip": "csv"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_TOO_MANY_FIELDS = re.compile(r"Skipping line (\d+): expected (\d+) fields, saw (\d+)")


def file_kind(path: Path) -> Literal["parquet", "arrow", "json", "csv"]:
    """What a replay file is, by its suffixes in any case (`AAPL.CSV.GZ` is CSV)."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    kind = _KINDS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise ConfigError(
            f"replay file {path}: give CSV ({', '.join(s for s, k in _KINDS.items() if k == 'csv')}"
            f", or compressed: {', '.join(_COMPRESSED)}), JSON, Parquet or Arrow (.feather); "
            "save a spreadsheet as CSV"
        )
    return kind  # type: ignore[return-value]


@dataclass(frozen=True)
class Table:
    """A file read: rtml's columns, `_start` (the time in epoch seconds; NaN where it cannot
    be read), sorted by it, and a BadRecord for each line that could not be split."""

    frame: pd.DataFrame
    kind: Literal["trades", "candles"]
    preset: Preset
    refused: list[BadRecord]


@dataclass(frozen=True)
class Reading:
    """How a replay file is read: `--format`, `--column NAME=COLUMN`, `--time-format` and
    `--delimiter`."""

    format: str = CANONICAL
    columns: Mapping[str, str] = field(default_factory=dict)
    time: str | None = None
    """A `strftime` format of the file's times, over the preset's."""
    delimiter: str | None = None

    def preset(self, base: Preset | None = None) -> Preset:
        """The preset with the user's mapping and time format over it."""
        if base is None and self.format == CANONICAL:
            base = Preset(CANONICAL, "candles", {}, "rtml's own column names", time=ISO)
        elif base is None and self.format in PRESETS:
            base = PRESETS[self.format]
        elif base is None:
            raise ConfigError(f"no format {self.format!r}; choose one of {', '.join(FORMATS)}")
        columns = {**base.columns, **self.columns}
        delimiter = self.delimiter or base.delimiter
        return replace(base, columns=columns, time=self.time or base.time, delimiter=delimiter)


AS_IS = Reading()


def _load(path: Path, preset: Preset, nrows: int | None = None) -> tuple[pd.DataFrame, list]:
    kind = file_kind(path)
    if kind == "parquet":
        return pd.read_parquet(path), []
    if kind == "arrow":
        return pd.read_feather(path), []
    if kind == "json":
        return pd.read_json(path, dtype=False, convert_dates=False), []
    options: dict[str, Any] = {
        "sep": preset.delimiter,
        "header": preset.header,
        "skiprows": None,
        "nrows": nrows,
        "on_bad_lines": "warn",
        "skipinitialspace": True,
    }
    if preset.header is None:  # no header: every field is text until its column is known
        options["dtype"] = str
    else:
        text = [c for n, c in preset.columns.items() if n in ("symbol", "trade_id", "date", "time")]
        options["dtype"] = dict.fromkeys(text, str)
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(path, encoding="utf-8-sig", **options)
        except UnicodeDecodeError:
            encoding = _encoding(path)
            log.info("%s is not UTF-8: read as %s", path.name, encoding)
            frame = pd.read_csv(path, encoding=encoding, **options)
    refused = [
        BadRecord(
            "wrong_type",
            f"line {line} of {path.name} has {saw} fields where its table has {expected}",
        )
        for w in told
        for line, expected, saw in _TOO_MANY_FIELDS.findall(str(w.message))
    ]
    if preset.header is not None:
        frame.columns = [str(c).strip() for c in frame.columns]
    return frame, refused


def _encoding(path: Path) -> str:
    from charset_normalizer import from_bytes

    with path.open("rb") as f:
        best = from_bytes(f.read(1 << 20)).best()
    if best is None:
        raise ConfigError(
            f"replay file {path} could not be read: it is not text in any encoding rtml can "
            "tell; give CSV, JSON, Parquet or Arrow"
        )
    return str(best.encoding)


def _mapped(frame: pd.DataFrame, preset: Preset) -> dict[str, Any]:
    """rtml's names -> the frame's columns: the preset's, or for the canonical format every
    column named as rtml names it, in any case."""
    if preset.name != CANONICAL:
        known: dict[str, Any] = dict(preset.columns)
    else:
        own = {str(c).strip().lower(): c for c in frame.columns}
        known = {n: own[n] for n in (*TRADE_COLUMNS, *CANDLE_COLUMNS) if n in own}
        known |= dict(preset.columns)
    out = {}
    positions = len(frame.columns) and not isinstance(frame.columns[0], int)
    for name, column in known.items():
        if isinstance(column, int) and positions and column < len(frame.columns):
            out[name] = frame.columns[column]  # a position in a file with a header row
        elif column in frame.columns:
            out[name] = column
    return out


def _ts(names: Iterable[str]) -> set[str]:
    """`ts`, where a day and a time of day are given apart."""
    return {"ts"} if {"date", "time"} <= set(names) else set()


def _needed(kind: str) -> set[str]:
    return set(TRADE_COLUMNS if kind == "trades" else CANDLE_COLUMNS) - OPTIONAL


def _kind(names: Iterable[str]) -> Literal["trades", "candles"] | None:
    have = {*names, *OPTIONAL, *_ts(names)}
    if _needed("trades") <= have:
        return "trades"
    return "candles" if _needed("candles") <= have else None


def seconds(times: pd.Series, preset: Preset) -> pd.Series:
    """Epoch seconds of `times` as the preset writes them; NaN where one cannot be read."""
    if pd.api.types.is_datetime64_any_dtype(times):
        moments = times if times.dt.tz is not None else times.dt.tz_localize(preset.zone)
        return _epoch(moments)
    if preset.time not in (EPOCH, ISO):
        moments = pd.to_datetime(times, format=preset.time, errors="coerce")
        if moments.dt.tz is None:
            moments = moments.dt.tz_localize(preset.zone, ambiguous="NaT", nonexistent="NaT")
        return _epoch(moments)
    numbers = pd.to_numeric(times, errors="coerce").astype(float)
    size = numbers.abs()
    out = numbers / np.select([size < 1e11, size < 1e14, size < 1e17], [1, 1e3, 1e6], 1e9)
    if preset.time == ISO and numbers.isna().any():
        text = times[numbers.isna()].astype(str)
        moments = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        out[numbers.isna()] = _epoch(moments)
    return out


def _epoch(moments: pd.Series) -> pd.Series:
    utc = moments.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    out = utc.astype("int64").astype(float) / 1e9
    return out.where(moments.notna())


def read_table(path: Path, reading: Reading = AS_IS, say: Any = log.info) -> Table:
    """The file as rtml's columns, read as `reading` declares (or by the first preset that
    reads it, for `--format auto`, said through `say`)."""
    if not path.exists():
        raise ConfigError(f"replay file {path} does not exist")
    if reading.format == AUTO:
        found = detect(path)
        if found is None:
            raise ConfigError(f"{path}: no preset reads it. {_advice(path)}")
        say(f"{path.name}: read as --format {found.name} ({found.about})")
        preset = reading.preset(found)
    else:
        preset = reading.preset()
    try:
        raw, refused = _load(path, preset)
    except (ValueError, OSError, EOFError, pd.errors.ParserError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"replay file {path} could not be read as {preset.name} "
            f"({type(exc).__name__}: {str(exc)[:200]}). {_advice(path)}"
        ) from None
    names = _mapped(raw, preset)
    kind = _kind(names) if preset.name == CANONICAL else preset.kind
    if kind is None or not _needed(kind) <= {*names, *OPTIONAL, *_ts(names)}:
        raise ConfigError(f"{path}: {_missing(names, preset)}. {_advice(path)}")
    frame = pd.DataFrame({n: raw[c] for n, c in names.items() if n not in ("date", "time")})
    frame["ts"] = times = _times(raw, names)
    if "symbol" not in frame:
        named = re.search(preset.symbol, path.name)
        frame["symbol"] = named.group(1) if named else path.stem
    if kind == "trades":
        if "side" not in frame:
            frame["side"] = preset.side
        else:  # `Buy`, `SELL`: a side in any case
            lower = frame["side"].astype(str).str.lower()
            frame["side"] = lower.map(preset.sides).fillna(lower) if preset.sides else lower
        if "trade_id" not in frame:
            frame["trade_id"] = [f"{path.stem}:{i}" for i in range(len(frame))]
    elif "volume" not in frame:
        frame["volume"] = 0.0
    for name in ("symbol", "trade_id"):
        if name in frame and frame[name].dtype.kind in "iufb":
            frame[name] = frame[name].astype(str)
    frame["_start"] = seconds(times, preset).to_numpy()
    frame = frame.sort_values("_start", na_position="first", kind="stable").reset_index(drop=True)
    return Table(frame, kind, preset, refused)


def detect(path: Path) -> Preset | None:
    """The first preset whose columns the file has (by name, or by the number of fields of a
    file without a header row) and whose times its first rows are written in."""
    return next((preset for preset in PRESETS.values() if matches(path, preset)), None)


def matches(path: Path, preset: Preset) -> bool:
    """The file has the preset's columns, and its first rows' times are written its way."""
    try:
        head, _ = _load(path, preset, nrows=5)
    except (ValueError, OSError, EOFError, pd.errors.ParserError, zipfile.BadZipFile, ConfigError):
        return False
    if len(head) == 0 or (preset.width is not None and len(head.columns) != preset.width):
        return False
    names = _mapped(head, preset)
    if not set(preset.columns) - OPTIONAL <= set(names):
        return False
    sides = head[names["side"]].astype(str).str.lower() if preset.sides else None
    if sides is not None and not sides.isin(preset.sides).all():
        return False
    number = {n: pd.to_numeric(head[c], errors="coerce") for n, c in names.items()}
    if preset.kind == "candles":  # the first rows are candles: low <= open, close <= high
        low, high = number["low"], number["high"]
        if not all(
            (low <= number[n]).all() and (number[n] <= high).all() for n in ("open", "close")
        ):
            return False
    elif not ((number["price"] > 0) & (number["size"] >= 0)).all():
        return False
    return bool(seconds(_times(head, names), preset).between(*PLAUSIBLE).all())


PLAUSIBLE = (315_532_800.0, 4_102_444_800.0)
"""1980 to 2100: the first rows' times of a file a preset reads (`detect`)."""


def _times(raw: pd.DataFrame, names: Mapping[str, Any]) -> pd.Series:
    if "ts" in names:
        return raw[names["ts"]]
    return raw[names["date"]].astype(str) + " " + raw[names["time"]].astype(str)


def _missing(names: Mapping[str, Any], preset: Preset) -> str:
    if preset.name == CANONICAL:
        trades, candles = (
            ", ".join(sorted(_needed(k) - set(names))) for k in ("trades", "candles")
        )
        return (
            f"not in rtml's canonical format: trades lack {trades}, candles lack {candles} "
            f"(optional: {', '.join(sorted(OPTIONAL))})"
        )
    absent = sorted(str(preset.columns[n]) for n in preset.columns if n not in names)
    return f"not read as {preset.name}: it has no column {', '.join(absent)}"


def _advice(path: Path) -> str:
    """The preset that reads the file and the command to try, or the closest preset."""
    found = detect(path)
    if found is not None:
        return f"It reads as preset {found.name} ({found.about}): try --format {found.name}"
    try:
        header = [str(c).strip() for c in _load(path, AS_IS.preset(), nrows=1)[0].columns]
    except Exception:
        header = []
    named = [p for p in PRESETS.values() if p.header is not None]
    closest = max(named, key=lambda p: len(set(map(str, p.columns.values())) & set(header)))
    return (
        f"Closest preset: {closest.name} ({closest.about}). Or map your columns to rtml's: "
        "--column ts=YOUR_TIME --column close=YOUR_CLOSE ... (`rtml formats` lists them all)"
    )


ROWS_AT_ONCE = 20_000
"""A replay turns this many rows at a time into records: the file is held as columns, and
only these rows as Python objects (each several times its size as a column's)."""


def _rows(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    for start in range(0, len(frame), ROWS_AT_ONCE):
        chunk: list[dict[str, Any]] = frame.iloc[start : start + ROWS_AT_ONCE].to_dict("records")  # type: ignore[assignment]
        yield from chunk


def replay(
    path: Path, reading: Reading = AS_IS, candle_seconds: int = 60
) -> Iterator[Trade | BadRecord]:
    """Trades from a file of trades or of candles, in event time.

    A candle becomes four trades (open, high, low, close) inside its window, so the candle
    builder reproduces its OHLC and volume. Bad rows are yielded as BadRecord, not dropped.
    """
    table = read_table(path, reading)
    yield from table.refused
    frame, written = table.frame, table.preset.time
    if table.kind == "trades":
        for row in _rows(frame[[*TRADE_COLUMNS, "_start"]]):
            try:
                row["ts"] = _start(row, written)
                del row["_start"]
                yield parse_trade(row)
            except BadRecord as exc:
                yield exc
        return
    at, given = math.nan, set[Any]()  # the symbols with a candle at `at` (rows are in time order)
    for row in _rows(frame[[*CANDLE_COLUMNS, "_start"]]):
        # a candle is good or bad as a whole: one BadRecord for it, never part of a candle
        try:
            start = _start(row, written)
            if start != at:
                at, given = start, set()
            if row["symbol"] in given:
                # its four trades would land in the same window: twice the volume, and the
                # two candles' prices merged into one
                raise BadRecord(
                    "duplicate", f"a second {row['symbol']!r:.60} candle at {row['ts']!r:.40}"
                )
            given.add(row["symbol"])
            volume = row["volume"]
            if volume is None or (isinstance(volume, float) and math.isnan(volume)):
                volume = 0.0  # a price without volume, as an index's or a currency's
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
                        "size": volume,
                        "side": "buy",
                        "ts": start + j * quarter,
                    }
                )
                for j, price in enumerate(prices)
            ]
        except BadRecord as exc:
            yield exc
            continue
        for trade in trades:  # the volume, checked as a trade's size, is the four trades'
            trade.size /= 4
        yield from trades


def _start(row: dict[str, Any], written: str) -> float:
    """A row's time in seconds, or BadRecord: one that is not written as the file's format
    says, or out of the years rtml reads (an end-of-time `9999-12-31`, 1e23 ns)."""
    start, value = row["_start"], row["ts"]
    if math.isnan(start):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise BadRecord("missing_field", "ts is empty")
        with contextlib.suppress(ValueError, TypeError):  # a day pandas' nanoseconds cannot hold
            in_years(datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp())
        raise BadRecord("wrong_type", f"ts {value!r:.80} is not written as {written}")
    return in_years(start)
