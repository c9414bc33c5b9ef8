"""The file formats rtml replays, as data: the canonical one and named presets of vendors'.

A preset says how to read one vendor's file, and nothing else: which of its columns (by name,
or by position when the file has no header row) are rtml's, how its times are written, in
which zone, and how its sides are spelled. Adding a vendor is one entry here and a fixture in
`tests/test_sources.py`; no entry changes how another is read. `--format auto` tries them in
this order and says which one read the file.

The canonical format is rtml's own column names (`files.TRADE_COLUMNS`, `files.CANDLE_COLUMNS`),
or the user's mapped to them with `--column NAME=COLUMN`; its times are epoch seconds, or
milliseconds, microseconds or nanoseconds (told apart by size), or ISO-8601.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

EPOCH = "epoch"
"""Times as numbers since 1970: seconds below 1e11, milliseconds below 1e14, microseconds
below 1e17, nanoseconds above (Binance's klines moved from milliseconds to microseconds)."""

ISO = "iso"
"""Times as ISO-8601 text (`2024-01-02`, `2024-01-02T09:30:00Z`), or epoch numbers."""

MAKER_SIDE = {"true": "sell", "false": "buy"}
"""`is_buyer_maker`: the buyer made the market, so the taker sold."""


@dataclass(frozen=True)
class Preset:
    name: str
    kind: Literal["trades", "candles"]
    columns: Mapping[str, str | int]
    """rtml's name -> the file's column (its name, or its position without a header row). `ts`,
    or `date` and `time` where a file writes the day and the time of day apart."""
    about: str
    header: int | None = 0
    """The line of the header row (lines above it are a vendor's preamble); None: no header."""
    width: int | None = None
    """A file without a header row: how many fields a row has."""
    delimiter: str = ","
    time: str = EPOCH
    """`EPOCH`, `ISO`, or a `strftime` format."""
    zone: str = "UTC"
    """The zone of times written without one."""
    sides: Mapping[str, str] = field(default_factory=dict)
    """The file's spelling of a side (lower case) -> `buy` or `sell`."""
    side: str = "buy"
    """The side of a trade whose file gives none."""
    symbol: str = r"^([A-Za-z0-9]+)"
    """Where the file has no symbol column: the symbol is this pattern's group in its name."""
    gap_policy: Literal["flat", "skip"] | None = None
    """The sessions of the markets this vendor sells (None: told by the file's own gaps)."""


_OHLCV = ("open", "high", "low", "close", "volume")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "binance-klines",
            "candles",
            {"ts": 0, **{c: i + 1 for i, c in enumerate(_OHLCV)}},
            "data.binance.vision klines: 12 columns, no header, ms (µs since 2025)",
            header=None,
            width=12,
            symbol=r"^([A-Z0-9]+)-",
        ),
        Preset(
            "binance-aggtrades",
            "trades",
            {"trade_id": 0, "price": 1, "size": 2, "ts": 5, "side": 6},
            "data.binance.vision aggTrades: 8 columns, no header, ms, buyer-is-maker",
            header=None,
            width=8,
            sides=MAKER_SIDE,
            symbol=r"^([A-Z0-9]+)-",
        ),
        Preset(
            "binance-trades",
            "trades",
            {"trade_id": 0, "price": 1, "size": 2, "ts": 4, "side": 5},
            "data.binance.vision trades: 7 columns, no header, ms, buyer-is-maker",
            header=None,
            width=7,
            sides=MAKER_SIDE,
            symbol=r"^([A-Z0-9]+)-",
        ),
        Preset(
            "kraken-ohlcvt",
            "candles",
            {"ts": 0, **{c: i + 1 for i, c in enumerate(_OHLCV)}},
            "Kraken's OHLCVT downloads (PAIR_MINUTES.csv): 7 columns, no header, seconds",
            header=None,
            width=7,
            symbol=r"^([A-Z0-9]+)_",
        ),
        Preset(
            "kraken-trades",
            "trades",
            {"ts": 0, "price": 1, "size": 2},
            "Kraken's trade downloads (PAIR.csv): time, price, volume; no header, id or side",
            header=None,
            width=3,
        ),
        Preset(
            "dukascopy",
            "candles",
            {"ts": "Gmt time", **{c: c.title() for c in _OHLCV}},
            "Dukascopy's candle export: `Gmt time` as 31.12.2024 23:00:00.000",
            time="%d.%m.%Y %H:%M:%S.%f",
            gap_policy="skip",
        ),
        Preset(
            "histdata",
            "candles",
            {"ts": 0, **{c: i + 1 for i, c in enumerate(_OHLCV)}},
            "HistData's ASCII 1-minute bars: `;`, no header, 20240102 170000 in EST (UTC-5)",
            header=None,
            width=6,
            delimiter=";",
            time="%Y%m%d %H%M%S",
            zone="Etc/GMT+5",
            symbol=r"^DAT_ASCII_([A-Z0-9]+)_",
            gap_policy="skip",
        ),
        Preset(
            "metatrader",
            "candles",
            {
                "date": "<DATE>",
                "time": "<TIME>",
                **{c: f"<{c.upper()}>" for c in _OHLCV[:4]},
                "volume": "<TICKVOL>",
            },
            "MetaTrader 5's bar export: tab-separated <DATE> 2024.01.02 and <TIME> 09:30:00",
            delimiter="\t",
            time="%Y.%m.%d %H:%M:%S",
            gap_policy="skip",
        ),
        Preset(
            "yahoo",
            "candles",
            {"ts": "Date", **{c: c.title() for c in _OHLCV}},
            "a Yahoo-style daily download: Date,Open,High,Low,Close,Adj Close,Volume",
            time="%Y-%m-%d",
            gap_policy="skip",
        ),
        Preset(
            "stooq",
            "candles",
            {
                "symbol": "<TICKER>",
                "date": "<DATE>",
                "time": "<TIME>",
                **{c: f"<{c.upper()}>" for c in _OHLCV[:4]},
                "volume": "<VOL>",
            },
            "Stooq's bulk text export: <TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,...,<VOL>",
            time="%Y%m%d %H%M%S",
            gap_policy="skip",
        ),
        Preset(
            "cryptodatadownload",
            "candles",
            {"ts": "Unix", "symbol": "Symbol", **{c: c.title() for c in _OHLCV[:4]}},
            "CryptoDataDownload: its address above the header, Unix ms, the base volume next",
            header=1,
        ),
        Preset(
            "ccxt-ohlcv",
            "candles",
            {"ts": 0, **{c: i + 1 for i, c in enumerate(_OHLCV)}},
            "ccxt's fetch_ohlcv saved as JSON: [[ms, open, high, low, close, volume], ...]",
            header=None,
            width=6,
        ),
        Preset(
            "ccxt-trades",
            "trades",
            {
                "symbol": "symbol",
                "trade_id": "id",
                "price": "price",
                "size": "amount",
                "side": "side",
                "ts": "timestamp",
            },
            "ccxt's fetch_trades saved as JSON: [{id, timestamp, symbol, side, price, amount}]",
        ),
    )
}
"""The presets `--format auto` tries, in this order."""
