"""Trade sources: replay files and a live feed against a local server in Kraken's v2 format."""

from __future__ import annotations

import bisect
import gzip
import io
import json
import random
import statistics
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from websockets.sync.server import ServerConnection, serve

from rtml.app.demo import Demo
from rtml.errors import ConfigError
from rtml.pipelines import kraken
from rtml.pipelines.candles import CandleBuilder
from rtml.pipelines.files import CandleProfile, candle_profile, paced, replay
from rtml.pipelines.processor import FeatureProcessor
from rtml.pipelines.sources import REGIMES, SyntheticMarket
from rtml.records import BadRecord, Trade
from rtml.settings import Settings


def test_replay_trades_with_a_column_mapping_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "trades.csv"
    pd.DataFrame(
        {
            "pair": ["BTC/USD", "BTC/USD", "BTC/USD"],
            "id": [1, 2, 3],
            "price": [10.0, -1.0, 11.0],
            "qty": [1.0, 1.0, 2.0],
            "side": ["buy", "sell", "sell"],
            "time": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "1767225602"],
        }
    ).to_csv(path, index=False)
    mapping = {"symbol": "pair", "trade_id": "id", "size": "qty", "ts": "time"}
    items = list(replay(path, mapping))
    assert [type(i) for i in items] == [Trade, BadRecord, Trade]
    assert isinstance(items[1], BadRecord) and items[1].kind == "non_positive"
    assert isinstance(items[2], Trade) and items[2].ts == 1767225602.0


def test_replay_candles_reproduce_their_ohlcv(tmp_path: Path) -> None:
    path = tmp_path / "candles.parquet"
    pd.DataFrame(
        {
            "symbol": ["X", "X"],
            "ts": [60, 120],
            "open": [10.0, 12.0],
            "high": [13.0, 14.0],
            "low": [9.0, 11.0],
            "close": [12.0, 13.0],
            "volume": [8.0, 4.0],
        }
    ).to_parquet(path)
    builder = CandleBuilder(60, 0)
    candles = []
    for trade in replay(path):
        assert isinstance(trade, Trade)
        candles.extend(builder.add(trade))
    candles.extend(builder.advance(float("inf")))
    assert [(c.open, c.high, c.low, c.close, c.volume) for c in candles] == [
        (10.0, 13.0, 9.0, 12.0, 8.0),
        (12.0, 14.0, 11.0, 13.0, 4.0),
    ]


def test_replay_names_the_columns_it_needs(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    pd.DataFrame({"a": [1]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="--column"):
        list(replay(path))


def test_paced_keeps_order_and_passes_bad_records_through() -> None:
    trades: list[Trade | BadRecord] = [
        Trade("X", str(i), 1.0, 1.0, "buy", i / 100) for i in range(5)
    ]
    assert list(paced(trades, 0)) == trades
    trades.insert(2, BadRecord("not_json", "x"))
    assert list(paced(trades, 1.0)) == trades  # 40 ms of event time, paced in real time


def _trade_message(kind: str, trades: list[dict[str, object]]) -> str:
    return json.dumps({"channel": "trade", "type": kind, "data": trades})


def _kraken_trade(i: int) -> dict[str, object]:
    return {
        "symbol": "BTC/USD",
        "side": "buy" if i % 2 else "sell",
        "price": 100.0 + i,
        "qty": 0.5,
        "ord_type": "market",
        "trade_id": i,
        "timestamp": f"2026-11-22T10:00:{i:02d}.000000Z",
    }


@pytest.fixture
def kraken_server() -> Iterator[tuple[str, list[str]]]:
    """A local server speaking Kraken v2: drops the first connection after a few messages."""
    subscriptions: list[str] = []
    connections = {"n": 0}

    def handler(ws: ServerConnection) -> None:
        connections["n"] += 1
        subscriptions.append(ws.recv(timeout=5))  # type: ignore[arg-type]
        ws.send(json.dumps({"method": "subscribe", "success": True, "result": {}}))
        ws.send(json.dumps({"channel": "heartbeat"}))
        if connections["n"] == 1:
            ws.send(_trade_message("snapshot", [_kraken_trade(1), _kraken_trade(2)]))
            ws.send(_trade_message("update", [{**_kraken_trade(3), "price": "NaN"}]))
            return  # the server drops the connection: the client must reconnect
        ws.send(_trade_message("update", [_kraken_trade(4)]))
        ws.send("not json")
        # hostile ones, each of which stopped the feed: nesting past the parser's depth, and
        # trade data that is not a list (a number, a long string)
        ws.send("[" * 50_000 + "]" * 50_000)
        ws.send(json.dumps({"channel": "trade", "type": "update", "data": 7}))
        ws.send(json.dumps({"channel": "trade", "type": "update", "data": "x" * 1_000}))
        ws.send(_trade_message("update", [_kraken_trade(5)]))
        try:
            ws.recv(timeout=10)
        except Exception:
            return

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}", subscriptions
        server.shutdown()


def test_live_feed_parses_reconnects_and_reports_bad_messages(
    kraken_server: tuple[str, list[str]],
) -> None:
    url, subscriptions = kraken_server
    stop = threading.Event()
    got: list[Trade | BadRecord] = []
    for item in kraken.stream(["BTC/USD"], url=url, stop=stop, max_backoff_s=0.5):
        got.append(item)
        if sum(isinstance(i, Trade) for i in got) == 4:
            stop.set()
            break
    trades = [i for i in got if isinstance(i, Trade)]
    bad = [i for i in got if isinstance(i, BadRecord)]
    assert [t.trade_id for t in trades] == ["1", "2", "4", "5"]
    assert trades[0].side == "buy" and trades[0].size == 0.5 and trades[0].price == 101.0
    assert sorted(b.kind for b in bad) == [
        "not_finite",
        "not_json",
        "too_large",  # 100 KB of brackets is past the record size before its depth counts
        "wrong_type",
        "wrong_type",
    ]
    assert len(subscriptions) == 2  # reconnected and subscribed again
    assert json.loads(subscriptions[0])["params"] == {
        "channel": "trade",
        "symbol": ["BTC/USD"],
        "snapshot": False,
    }


def test_synthetic_regimes_flip_what_recent_returns_say_about_the_target() -> None:
    """Concept drift by construction: the same feature predicts the target with opposite signs."""
    market = SyntheticMarket(["A", "B", "C"], seed=3, start_ts=0, trades_per_candle=4)
    processor = FeatureProcessor(60, 0, 5)
    examples = [e for t in market.candles_of_trades(3000) for e in processor.on_trade(t).examples]
    starts = [ts for ts, _ in market.regime_log]
    momentum = {r.name: r.persistence > 0 for r in REGIMES}
    pairs: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
    for ex in examples:
        i = bisect.bisect_right(starts, ex.ts) - 1
        # only examples whose features and target lie inside one regime
        if bisect.bisect_right(starts, ex.label_ts) - 1 != i or ex.ts - starts[i] < 15 * 60:
            continue
        xs, ys = pairs[momentum[market.regime_log[i][1]]]
        xs.append(ex.features["ret_5"])
        ys.append(ex.target)
    assert len(market.regime_log) >= 4 and all(len(xs) > 1000 for xs, _ in pairs.values())
    assert statistics.correlation(*pairs[True]) > 0.5  # momentum: moves continue
    assert statistics.correlation(*pairs[False]) < -0.25  # reversion: moves are given back


def test_replay_of_a_messy_candle_file_yields_every_row_good_or_bad(tmp_path: Path) -> None:
    """A repeated header, a text volume, a missing price, a ticker that looks like a number,
    epoch seconds of different lengths: every row comes back, as a trade or as a BadRecord."""
    path = tmp_path / "messy.csv"
    path.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        "7203,1000,10,11,9,10.5,8\n"
        "symbol,ts,open,high,low,close,volume\n"
        "7203,940,10,11,9,10,four\n"
        "7203,880,10,11,9,,4\n"
        "7203,999,10,11,9,10,4\n"
    )
    items = list(replay(path, candle_seconds=60))
    trades = [i for i in items if isinstance(i, Trade)]
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert {t.symbol for t in trades} == {"7203"}
    # 999 before 1000 although "999" > "1000" as text; the header row's time is unreadable
    assert [t.ts for t in trades][::4] == [999.0, 1000.0]
    assert sorted(b.kind for b in bad) == ["not_finite", "wrong_type", "wrong_type"]
    assert len(items) == 2 * 4 + 3  # two whole candles, three rows refused once each


def _candle_rows(start: float, n: int, scale: float = 1.0) -> list[str]:
    return [f"X,{(start + 60 * i) * scale:.0f},1,2,0.5,1.5,10" for i in range(n)]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        # headers as spreadsheets and exchanges write them
        ("bom.csv", "\ufeffsymbol,ts,open,high,low,close,volume\n"),
        ("semicolons.csv", "symbol;ts;open;high;low;close;volume\n"),
        ("tabs.csv", "symbol\tts\topen\thigh\tlow\tclose\tvolume\n"),
        ("case.csv", " Symbol,TS,Open,High,Low,Close, Volume \n"),
    ],
)
def test_replay_reads_the_headers_users_have(tmp_path: Path, name: str, content: str) -> None:
    sep = next(d for d in (";", "\t", ",") if d in content)
    path = tmp_path / name
    path.write_text(content + "\n".join(r.replace(",", sep) for r in _candle_rows(1.7e9, 3)))
    trades = [t for t in replay(path) if isinstance(t, Trade)]
    assert len(trades) == 12
    assert [t.ts for t in trades][::4] == [1.7e9, 1.7e9 + 60, 1.7e9 + 120]


def test_one_instruments_download_without_symbol_or_volume_is_replayed(tmp_path: Path) -> None:
    """Yahoo's and Stooq's downloads: `Date` for the time, no symbol column (the file is named
    after its instrument), an `Adj Close`, and for an index or a currency no volume, or
    blank and zero volumes. Every row was refused before (no symbol; a trade of size 0)."""
    path = tmp_path / "SPX.csv"
    path.write_text(
        "Date,Open,High,Low,Close,Adj Close\n"
        "2024-01-02,10,12,9,11,11\n2024-01-03,11,13,10,12,12\n2024-01-04,12,14,11,13,13\n"
    )
    with_volume = tmp_path / "IDX.csv"
    with_volume.write_text(
        "date,open,high,low,close,volume\n2024-01-02,10,12,9,11,\n2024-01-03,11,13,10,12,0\n"
    )
    assert candle_profile(path) is not None and candle_profile(path).seconds == 86_400  # type: ignore[union-attr]
    for file, symbol, rows in ((path, "SPX", 3), (with_volume, "IDX", 2)):
        trades = list(replay(file, candle_seconds=86_400))
        assert all(isinstance(t, Trade) and t.symbol == symbol for t in trades)
        assert len(trades) == 4 * rows and {t.size for t in trades if isinstance(t, Trade)} == {0}
    builder = CandleBuilder(86_400, 0)
    candles = [c for t in replay(path, candle_seconds=86_400) for c in builder.add(t)]  # type: ignore[arg-type]
    assert [(c.close, c.volume, c.vwap) for c in candles] == [(11.0, 0.0, 11.0), (12.0, 0.0, 12.0)]


@pytest.mark.parametrize(
    ("header", "day", "clock"),
    [
        ("Date,Time,Open,High,Low,Close,Volume", "2024-01-02", "09:{m:02d}:00"),  # Stooq
        ("Date,Time,Open,High,Low,Close,Volume", "2024.01.02", "09:{m:02d}"),  # MetaTrader
        ("Date,Time,Open,High,Low,Close,Volume", "20240102", "09:{m:02d}"),
    ],
)
def test_an_intraday_export_with_the_day_and_the_time_apart(
    tmp_path: Path, header: str, day: str, clock: str
) -> None:
    """The day and the time of day in two columns are one time: read as the day alone, the
    bars of a day were one candle given many times (all but one `duplicate`)."""
    path = tmp_path / "EURUSD.csv"
    rows = [f"{day},{clock.format(m=m)},1.1,1.2,1.0,1.1{m},0" for m in range(5)]
    path.write_text(header + "\n" + "\n".join(rows))
    profile = candle_profile(path)
    assert profile is not None and profile.seconds == 60
    trades = list(replay(path))
    assert all(isinstance(t, Trade) and t.symbol == "EURUSD" for t in trades)
    starts = sorted({t.ts for t in trades if isinstance(t, Trade)})[::4]
    assert starts == [1704186000.0 + 60 * m for m in range(5)]  # 2024-01-02 09:00 UTC on


@pytest.mark.parametrize(
    ("name", "header", "row", "symbol"),
    [
        # Stooq's bulk text export: bracketed names, the day and the time as digits, `<VOL>`
        (
            "aapl.us.txt",
            "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>",
            "AAPL.US,1,20240102,09{m:02d}00,1.1,1.2,1.0,1.1{m},10,0",
            "AAPL.US",
        ),
        # a tab-separated file with an upper-case suffix, its times as 14 digits
        (
            "AAPL.TSV",
            "ts\topen\thigh\tlow\tclose\tvolume",
            "2024010209{m:02d}00\t1.1\t1.2\t1\t1.1{m}\t10",
            "AAPL",
        ),
        # MetaTrader's export with its tick volume only (no `<VOL>`), tab-separated
        (
            "EURUSD_M1.txt",
            "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<SPREAD>",
            "2024.01.02\t09:{m:02d}:00\t1.1\t1.2\t1.0\t1.1{m}\t10\t2",
            "EURUSD",  # the instrument, not its period
        ),
        # a day and a time apart, gzipped, as a vendor ships it
        (
            "AAPL.CSV.GZ",
            "Date,Time,Open,High,Low,Close,Vol",
            "2024-01-02,09:{m:02d},1.1,1.2,1,1.1{m},10",
            "AAPL",
        ),
    ],
)
def test_vendor_text_exports_replay_whatever_their_suffix(
    tmp_path: Path, name: str, header: str, row: str, symbol: str
) -> None:
    """Files as vendors name and write them were refused (`.txt`, `.TSV`, `.CSV.GZ`) or read
    with no column found (`<CLOSE>`, `<VOL>`), and a 14-digit time was read as milliseconds,
    the year 2611. Each now replays as the same five one-minute candles."""
    path = tmp_path / name
    text = header + "\n" + "\n".join(row.format(m=m) for m in range(5)) + "\n"
    if name.lower().endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    profile = candle_profile(path)
    assert profile is not None and profile.seconds == 60
    trades = [t for t in replay(path) if isinstance(t, Trade)]
    assert len(trades) == 4 * 5 and {t.symbol for t in trades} == {symbol}
    assert sorted({t.ts for t in trades})[::4] == [1704186000.0 + 60 * m for m in range(5)]
    assert sum(t.size for t in trades) == pytest.approx(50.0)


def test_prices_grouped_in_thousands_are_read_and_an_ambiguous_day_says_why(
    tmp_path: Path,
) -> None:
    """Spreadsheets and quote sites export "42,280.5": every row was `wrong_type` before. A
    day written 01/02/2024 is January 2 or February 1: refused, saying how to write it."""
    path = tmp_path / "BTC.csv"
    path.write_text(
        '"Date","Open","High","Low","Close","Volume"\n'
        '"2024-01-01","42,280.0","42,500.5","42,000.0","42,300.1","1,234"\n'
        '"2024-01-02","42,300.1","43,001.0","42,100.0","42,900.0","2,000"\n'
    )
    trades = [t for t in replay(path, candle_seconds=86_400) if isinstance(t, Trade)]
    assert len(trades) == 8  # two candles of four trades, none refused
    assert [t.price for t in trades[:4]] == [42_280.0, 42_500.5, 42_000.0, 42_300.1]
    assert sum(t.size for t in trades) == pytest.approx(3_234.0)
    ambiguous = tmp_path / "ETH.csv"
    ambiguous.write_text("date,open,high,low,close,volume\n01/02/2024,1,2,0.5,1.5,10\n")
    (refused,) = list(replay(ambiguous, candle_seconds=86_400))
    assert isinstance(refused, BadRecord) and "YYYY-MM-DD" in str(refused)


@pytest.mark.parametrize(
    ("rows", "days"),
    [
        (["01/30/2024", "01/31/2024", "02/01/2024"], ["2024-01-30", "2024-01-31", "2024-02-01"]),
        (["30.01.2024", "31.01.2024", "01.02.2024"], ["2024-01-30", "2024-01-31", "2024-02-01"]),
        (["02/01/2024 09:30", "13/01/2024 09:30"], ["2024-01-02T09:30", "2024-01-13T09:30"]),
    ],
)
def test_days_written_with_the_year_last_are_read_in_the_order_the_file_shows(
    tmp_path: Path, rows: list[str], days: list[str]
) -> None:
    """Quote sites and spreadsheets write 01/31/2024 (the US) or 31.01.2024 (Europe): every
    row was refused as ambiguous. A day above 12 in either place tells the whole file's order,
    and 02/01/2024 beside 13/01/2024 is the 2nd of January."""
    path = tmp_path / "EUR.csv"
    lines = [f"{day},1,2,0.5,1.5,10" for day in rows]
    path.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(lines) + "\n")
    got = list(replay(path, candle_seconds=86_400))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 4 * len(rows)
    starts = [t.ts for t in trades[::4]]
    assert starts == [datetime.fromisoformat(d).replace(tzinfo=UTC).timestamp() for d in days]


@pytest.mark.parametrize("sep", [",", ";"])
def test_a_quote_sites_history_download_replays_as_its_candles(tmp_path: Path, sep: str) -> None:
    """Quote sites' history downloads: the close is `Price`, volumes are `Vol.` written
    `57.30K` or `1.2M` (`-` where none was reported), days are M/D/Y, thousands are grouped,
    a `Change %` column rides along, and the newest day comes first. Every row was refused
    before. With semicolons the decimal mark is a comma, in the volumes too."""
    rows: list[tuple[str, ...]] = [
        ("01/31/2024", "42,580.5", "43,302.7", "43,745.6", "42,300.0", "57.30K", "-1.67%"),
        ("01/30/2024", "43,302.7", "43,288.2", "43,838.9", "42,711.0", "1.2M", "0.03%"),
        ("01/29/2024", "43,288.2", "42,031.1", "43,305.0", "41,818.0", "-", "2.99%"),
    ]
    if sep == ";":  # the same file from a locale that writes 42.580,5
        rows = [
            tuple(f.replace(",", "_").replace(".", ",").replace("_", ".") for f in row)
            for row in rows
        ]
    header = ["Date", "Price", "Open", "High", "Low", "Vol.", "Change %"]
    lines = [sep.join(f'"{f}"' for f in line) for line in [header, *rows]]
    path = tmp_path / "BTCUSD.csv"
    path.write_text("\n".join(lines) + "\n")
    got = list(replay(path, candle_seconds=86_400))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 12
    assert {t.symbol for t in trades} == {"BTCUSD"}
    closes = [t.price for t in trades[3::4]]
    assert closes == [43_288.2, 43_302.7, 42_580.5]  # in event time: the 29th first
    volumes = [sum(t.size for t in trades[i : i + 4]) for i in range(0, 12, 4)]
    assert volumes == [0.0, pytest.approx(1.2e6), pytest.approx(57_300.0)]
    day = datetime(2024, 1, 29, tzinfo=UTC).timestamp()
    assert [t.ts for t in trades[::4]] == [day, day + 86_400, day + 2 * 86_400]


def test_days_no_row_tells_apart_are_refused_each_saying_how_to_write_them(
    tmp_path: Path,
) -> None:
    """Where every part is 12 or below, or the file says both orders, nothing tells: each such
    row is refused, saying how to write it, and the rest of the file is read."""
    for rows in (["01/02/2024", "03/04/2024"], ["13/01/2024", "01/13/2024"]):
        path = tmp_path / "GBP.csv"
        lines = [f"{day},1,2,0.5,1.5,10" for day in [*rows, "2024-02-05"]]
        path.write_text("date,open,high,low,close,volume\n" + "\n".join(lines) + "\n")
        got = list(replay(path, candle_seconds=86_400))
        refused = [r for r in got if isinstance(r, BadRecord)]
        assert len(refused) == 2 and all("YYYY-MM-DD" in str(r) for r in refused)
        assert len([t for t in got if isinstance(t, Trade)]) == 4


@pytest.mark.parametrize("far", ["9999-12-31", "99999999999999999999999"])
def test_a_candle_past_the_year_5138_is_refused_not_replayed_in_the_1970s(
    tmp_path: Path, far: str
) -> None:
    """A candle's start, once read, is handed on as seconds; a start of 1e11 s or more (an
    end-of-time `9999-12-31`, 1e23 ns) was read again as milliseconds or microseconds, and its
    four trades landed in 1973 to 1978, where a young symbol's clock would have started."""
    path = tmp_path / "X.csv"
    path.write_text(
        f"ts,open,high,low,close,volume\n2024-01-02,1,2,0.5,1.5,10\n{far},1,2,0.5,1.5,10\n"
    )
    got = list(replay(path, candle_seconds=86_400))
    refused = [r for r in got if isinstance(r, BadRecord)]
    assert [r.kind for r in refused] == ["out_of_range"]
    assert [t.ts for t in got if isinstance(t, Trade)][::4] == [1_704_153_600.0]


def test_a_european_spreadsheet_export_with_decimal_commas(tmp_path: Path) -> None:
    """Spreadsheets in many locales write semicolons between fields and a comma for the
    decimal mark: every price was `wrong_type` before. A dot is still read in such files."""
    path = tmp_path / "SAP.csv"
    path.write_text(
        "Date;Open;High;Low;Close;Volume\n"
        "2024-01-01;142,5;145,25;141,0;144,75;1200,5\n"
        "2024-01-02;144.75;146;143.5;145.5;800\n"
    )
    trades = [t for t in replay(path, candle_seconds=86_400) if isinstance(t, Trade)]
    assert [t.price for t in trades] == [142.5, 145.25, 141.0, 144.75, 144.75, 146, 143.5, 145.5]
    assert sum(t.size for t in trades) == pytest.approx(2_000.5)


@pytest.mark.parametrize("name", ["AAPL.CSV.GZ", "aapl.us.txt", "AAPL.PARQUET"])
def test_the_demo_splits_a_vendors_file_into_parts_it_reads_back(tmp_path: Path, name: str) -> None:
    """`rtml demo --source FILE` splits the file into history and stream. The parts were
    named after the file's last suffix: `history.GZ` held plain CSV, `history.PARQUET` a CSV
    read back as Parquet. They are rtml's own files: `.csv`, or `.parquet` for Parquet."""
    rows = [f"AAPL,2024-01-0{d},1,2,0.5,1.{d},10" for d in range(1, 9)]
    text = "symbol,ts,open,high,low,close,volume\n" + "\n".join(rows) + "\n"
    path = tmp_path / name
    if name.endswith(".GZ"):
        path.write_bytes(gzip.compress(text.encode()))
    elif name.endswith(".PARQUET"):
        (tmp_path / "plain.csv").write_text(text)
        pd.read_csv(tmp_path / "plain.csv").to_parquet(path, index=False)
    else:
        path.write_text(text)
    demo = Demo(Settings(state_dir=tmp_path / "state"), source=str(path), out=lambda _: None)
    history, stream = demo.split_replay(path)
    read = [
        [t for t in replay(part, candle_seconds=86_400) if isinstance(t, Trade)]
        for part in (history, stream)
    ]
    assert [len(trades) for trades in read] == [4 * 4, 4 * 4]
    assert max(t.ts for t in read[0]) < min(t.ts for t in read[1])


def test_a_file_of_another_kind_says_which_kinds_are_read(tmp_path: Path) -> None:
    path = tmp_path / "prices.ods"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(
        ConfigError, match=r"\.csv, \.txt, \.tsv.*\.gz, \.bz2.*JSON.*xlsx.*Parquet.*Arrow"
    ):
        list(replay(path))
    broken = tmp_path / "prices.xlsx"  # workbooks that are not one
    for content in (b"PK\x03\x04", b"", _zipped(**{"hello.txt": "hi"})):
        broken.write_bytes(content)
        with pytest.raises(ConfigError, match="could not be read"):
            list(replay(broken))


@pytest.mark.parametrize(
    ("name", "symbol", "rows"),
    [
        (  # Binance's klines (data.binance.vision): twelve columns, milliseconds, no header
            "BTCUSDT-1m-2024-01.csv",
            "BTCUSDT",
            [
                "1704067200000,42283.58,42298.62,42261.02,42298.61,35.92,1704067259999,"
                "1518892.1,1284,17.45,737783.2,0",
                "1704067260000,42298.62,42320.00,42298.61,42298.61,21.10,1704067319999,"
                "892557.9,930,9.01,381122.4,0",
            ],
        ),
        (  # Kraken's OHLCVT downloads: seconds, seven columns, no header
            "XBTUSD_1.csv",
            "XBTUSD",
            [
                "1704067200,42283.5,42298.6,42261.0,42298.6,35.9,120",
                "1704067260,42298.6,42320,42298.6,42298.6,21.1,80",
            ],
        ),
    ],
)
def test_an_exchanges_candle_file_without_a_header_row_is_read_by_its_shape(
    tmp_path: Path, name: str, symbol: str, rows: list[str]
) -> None:
    """Binance's and Kraken's candle downloads have no header row: they were refused. Their
    number of columns and candle-shaped rows say what they are. Binance names each month's file
    BTCUSDT-1m-2024-01 and Kraken's is XBTUSD_1: the symbols are BTCUSDT and XBTUSD."""
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    got = list(replay(path))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 8
    assert {t.symbol for t in trades} == {symbol}
    assert [t.ts for t in trades[::4]] == [1_704_067_200.0, 1_704_067_260.0]
    first = [float(v) for v in rows[0].split(",")[1:5]]
    assert [t.price for t in trades[:4]] == first  # open, high, low, close


@pytest.mark.parametrize(
    ("name", "rows", "ids", "sides"),
    [
        (  # Binance's trades: id, price, qty, quote qty, time (ms), buyer is maker, best match
            "BTCUSDT-trades-2024-01-15.csv",
            [
                "3000000001,42000.5,0.1,4200.05,1704067200000,true,true",
                "3000000002,42001.0,0.2,8400.2,1704067200500,false,true",
                "3000000003,42002.5,0.3,12600.75,1704067201000,False,True",
            ],
            ["3000000001", "3000000002", "3000000003"],
            ["sell", "buy", "buy"],  # the buyer made the market: the taker sold
        ),
        (  # Binance's aggTrades: id, price, qty, first id, last id, time, maker, best match
            "BTCUSDT-aggTrades-2024-01.csv",
            [
                "100,42000.5,0.1,200,201,1704067200000,True,True",
                "101,42001.0,0.2,202,202,1704067200500,False,True",
                "102,42002.5,0.3,203,205,1704067201000,True,True",
            ],
            ["100", "101", "102"],
            ["sell", "buy", "sell"],
        ),
        (  # Kraken's trades: time, price, volume; no id, no side
            "XBTUSD.csv",
            ["1704067200,42000.5,0.1", "1704067200.5,42001.0,0.2", "1704067201,42002.5,0.3"],
            None,
            ["buy", "buy", "buy"],
        ),
    ],
)
def test_an_exchanges_trade_file_without_a_header_row_is_read_by_its_shape(
    tmp_path: Path, name: str, rows: list[str], ids: list[str] | None, sides: list[str]
) -> None:
    """Binance's trade downloads and Kraken's have no header row, and were refused (Binance's
    `true`/`false` columns hid that the first line is values). Their columns and rows say
    what they are; a file without trade ids gets one per row, so no trade of it is dropped
    as a duplicate of another and the same file replayed twice is the same trades."""
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    got = list(replay(path))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 3
    assert {t.symbol for t in trades} == {name.partition("-")[0].partition(".")[0]}
    assert [t.price for t in trades] == [42000.5, 42001.0, 42002.5]
    assert [t.size for t in trades] == [0.1, 0.2, 0.3]
    assert [t.ts for t in trades] == [1704067200.0, 1704067200.5, 1704067201.0]
    assert [t.side for t in trades] == sides
    if ids is not None:
        assert [t.trade_id for t in trades] == ids
    else:
        assert len({t.trade_id for t in trades}) == 3
        assert [t.trade_id for t in replay(path) if isinstance(t, Trade)] == [
            t.trade_id for t in trades
        ]


def test_a_headerless_file_with_a_bad_row_or_an_empty_field_is_still_read_by_its_shape(
    tmp_path: Path,
) -> None:
    """One row among the first thousand that is not a candle (a high below its open, a price
    that is text) made the whole file unreadable; a first line with an empty field (no volume
    given) was taken for a header. Now the file is read: the row that is not numbers is
    refused on its own, and the odd candle is replayed as it would be in a file with a
    header row."""
    rows = [f"{1704067200 + 60 * i},100,101,99,100.5,{'' if i == 0 else 5}" for i in range(60)]
    rows[7] = "1704067620,100,90,99,100.5,5"  # a high below its open: not a candle
    rows[9] = "1704067740,abc,101,99,100.5,5"  # a price that is not a number
    path = tmp_path / "prices.csv"
    path.write_text("\n".join(rows) + "\n")
    got = list(replay(path))
    bad = [r for r in got if isinstance(r, BadRecord)]
    trades = [t for t in got if isinstance(t, Trade)]
    assert [b.kind for b in bad] == ["wrong_type"]  # the text price; the shape is the file's
    assert len(trades) == 59 * 4
    assert trades[0].size == 0.0  # no volume given: a price without volume


def test_a_vendors_line_above_the_header_is_passed_over(tmp_path: Path) -> None:
    """CryptoDataDownload writes its address above the header (and two volumes, the base
    currency's first); the file was read as one column named after the address."""
    path = tmp_path / "Binance_BTCUSDT_1h.csv"
    path.write_text(
        "https://www.CryptoDataDownload.com\n"
        "Unix,Date,Symbol,Open,High,Low,Close,Volume BTC,Volume USDT,tradecount\n"
        "1704070800000,2024-01-01 01:00:00,BTCUSDT,42300,42400,42250,42350,12.5,529000,900\n"
        "1704067200000,2024-01-01 00:00:00,BTCUSDT,42283,42310,42200,42300,10.0,423000,800\n"
    )
    trades = [t for t in replay(path) if isinstance(t, Trade)]
    assert [t.ts for t in trades[::4]] == [1704067200.0, 1704070800.0]  # in event time
    assert [t.price for t in trades[:4]] == [42283.0, 42310.0, 42200.0, 42300.0]
    assert sum(t.size for t in trades[:4]) == 10.0  # the base currency's volume
    assert {t.symbol for t in trades} == {"BTCUSDT"}
    assert candle_profile(path) == CandleProfile(3600, 0.0)


@pytest.mark.parametrize(
    "header",
    [
        "startTime,openPrice,highPrice,lowPrice,closePrice,volume,turnover",  # Bybit
        "time_period_start,price_open,price_high,price_low,price_close,volume_traded",
        "Timestamp,Open,High,Low,Close,Volume_(BTC),Volume_(Currency),Weighted_Price",  # Kaggle
        "Start Time,Open Price,High Price,Low Price,Close Price,Volume (Base)",
    ],
)
def test_candle_columns_spelled_with_more_words_are_read(tmp_path: Path, header: str) -> None:
    width = header.count(",") + 1
    rows = [
        ",".join(["1704067200", "100", "102", "99", "101", "7", *["1"] * (width - 6)]),
        ",".join(["1704067260", "101", "103", "100", "102", "9", *["1"] * (width - 6)]),
    ]
    path = tmp_path / "BTCUSDT.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    got = list(replay(path))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 8
    assert [t.price for t in trades] == [100, 102, 99, 101, 101, 103, 100, 102]
    assert [sum(t.size for t in trades[i : i + 4]) for i in (0, 4)] == [7.0, 9.0]


@pytest.mark.parametrize(
    ("header", "rows", "sides"),
    [
        (  # BitMEX's public trades: kdb times, `Buy`/`Sell`, `trdMatchID`
            "timestamp,symbol,side,size,price,tickDirection,trdMatchID",
            [
                "2019-10-01D00:00:00.500000000,XBTUSD,Buy,100,8300.5,PlusTick,a1",
                "2019-10-01D00:00:01.000000000,XBTUSD,Sell,200,8300.0,MinusTick,a2",
            ],
            ["buy", "sell"],
        ),
        (  # a time and sales export: the size is `volume`, sides `b` and `s`, no id
            "time,price,volume,side",
            ["1569888000.5,8300.5,100,b", "1569888001,8300.0,200,s"],
            ["buy", "sell"],
        ),
        ("Time,Price,Qty", ["1569888000.5,8300.5,100", "1569888001,8300.0,200"], ["buy", "buy"]),
        (  # Binance's aggTrades with their header: milliseconds, the maker's side
            "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
            ["7,8300.5,100,10,11,1569888000500,true", "8,8300.0,200,12,12,1569888001000,False"],
            ["sell", "buy"],
        ),
        (  # Databento's trades: nanoseconds, the aggressor's side B, A or N
            "ts_recv,ts_event,rtype,publisher_id,instrument_id,action,side,depth,price,size,"
            "flags,ts_in_delta,sequence,symbol",
            [
                "1569888000500100000,1569888000500000000,0,1,42,T,A,0,8300.5,100,0,100,1,XBTUSD",
                "1569888001000100000,1569888001000000000,0,1,42,T,N,0,8300.0,200,0,100,2,XBTUSD",
            ],
            ["sell", "buy"],
        ),
        (  # Polygon's flat files: the SIP's time, an id
            "ticker,conditions,correction,exchange,id,participant_timestamp,price,"
            "sequence_number,sip_timestamp,size,tape,trf_id,trf_timestamp",
            [
                'XBTUSD,"12,37",0,11,1,1569888000400000000,8300.5,1,1569888000500000000,100,3,,',
                'XBTUSD,"12,37",0,11,2,1569888000900000000,8300.0,2,1569888001000000000,200,3,,',
            ],
            ["buy", "buy"],
        ),
    ],
)
def test_a_trade_file_without_ids_or_sides_as_rtml_names_them_is_trades(
    tmp_path: Path, header: str, rows: list[str], sides: list[str]
) -> None:
    path = tmp_path / "XBTUSD.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    got = list(replay(path))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 2
    assert [(t.ts, t.price, t.size) for t in trades] == [
        (1569888000.5, 8300.5, 100.0),
        (1569888001.0, 8300.0, 200.0),
    ]
    assert [t.side for t in trades] == sides and {t.symbol for t in trades} == {"XBTUSD"}
    assert len({t.trade_id for t in trades}) == 2


@pytest.mark.parametrize(
    ("how", "encoding", "sep", "first"),
    [
        ("Unicode text", "utf-16", "\t", ""),  # a spreadsheet's UTF-16 export, tabbed
        ("Windows-1252", "cp1252", ";", ""),  # a Western locale's CSV: é, €
        ("a delimiter line", "utf-8", ";", "sep=;\r\n"),  # a spreadsheet names its delimiter
        ("gzipped Windows-1252", "cp1252", ",", ""),
    ],
)
def test_files_as_spreadsheets_save_them(
    tmp_path: Path, how: str, encoding: str, sep: str, first: str
) -> None:
    """A spreadsheet's "Unicode text" export is UTF-16; CSVs from Western locales are often
    Windows-1252; some begin with `sep=;`. They were refused as not UTF-8, or read as one
    column named `sep=`."""
    rows = [
        sep.join(["Date", "Open", "High", "Low", "Close", "Volume", "Note"]),
        *(sep.join([f"2024-01-0{d}", "100", "102", "99", "101", "7", "café €"]) for d in (2, 3)),
    ]
    data = (first + "\r\n".join(rows) + "\r\n").encode(encoding)
    path = tmp_path / "DAX.txt"
    if how.startswith("gzipped"):
        path = tmp_path / "DAX.csv.gz"
        data = gzip.compress(data)
    path.write_bytes(data)
    got = list(replay(path))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 8
    assert [t.price for t in trades[:4]] == [100.0, 102.0, 99.0, 101.0]
    assert {t.symbol for t in trades} == {"DAX"}


def test_binances_monthly_zip_is_read_as_it_is_downloaded(tmp_path: Path) -> None:
    """data.binance.vision serves each month's klines as a zip of one headerless CSV."""
    rows = [
        f"{1704067200000 + 60_000 * i},{100 + i},{101 + i},{99 + i},{100.5 + i},5,"
        f"{1704067259999 + 60_000 * i},500,10,2.5,250,0"
        for i in range(3)
    ]
    path = tmp_path / "ETHUSDT-1m-2024-01.zip"
    path.write_bytes(_zipped(**{"ETHUSDT-1m-2024-01.csv": "\n".join(rows) + "\n"}))
    trades = [t for t in replay(path) if isinstance(t, Trade)]
    assert [t.price for t in trades[3::4]] == [100.5, 101.5, 102.5]
    assert {t.symbol for t in trades} == {"ETHUSDT"}
    assert candle_profile(path) == CandleProfile(60, 0.0)


@pytest.mark.parametrize(
    "rows",
    [
        ["1704067200,5,4,1,2,10", "1704067260,2,9,1,3,10"],  # a high below its open
        ["1,42000.5,0.1,4200.05,1704067200000,1,true"],  # Binance's 7, its booleans misplaced
        [f"{1735689600 + i},{100 + i / 100}" for i in range(30)],  # a time and a price: no size
        [f"{i},{2 * i},{3 * i}" for i in range(30)],  # numbers, no time among them
        [f"{1735689600 + i},1,2,3,4,5,6" for i in range(30)],  # six numbers, not a candle
        [",".join(str(1735689600 + i + j) for j in range(40)) for i in range(20)],  # too wide
    ],
)
def test_a_file_without_a_header_row_of_no_known_shape_says_so(
    tmp_path: Path, rows: list[str]
) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=r"no header row.*add a header row"):
        list(replay(path))


@pytest.mark.parametrize("scale", [1, 1e3, 1e6, 1e9])
def test_epoch_times_in_any_unit_are_the_same_seconds(tmp_path: Path, scale: float) -> None:
    """Milliseconds (as Binance writes klines), microseconds or nanoseconds are not read as
    seconds of the year 55,000."""
    path = tmp_path / "candles.csv"
    path.write_text(
        "symbol,ts,open,high,low,close,volume\n" + "\n".join(_candle_rows(1.7e9, 3, scale))
    )
    trades = [t for t in replay(path) if isinstance(t, Trade)]
    assert [t.ts for t in trades][::4] == [1.7e9, 1.7e9 + 60, 1.7e9 + 120]
    profile = candle_profile(path)
    assert profile is not None and profile.seconds == 60


def test_a_parquet_file_with_datetime_times(tmp_path: Path) -> None:
    path = tmp_path / "candles.parquet"
    frame = pd.DataFrame(
        {
            "symbol": ["X", "X", "X"],
            "ts": [pd.Timestamp("2024-01-01 00:00"), pd.Timestamp("2024-01-01 00:01"), pd.NaT],
            **{c: [1.0, 1.0, 1.0] for c in ("open", "high", "low", "close", "volume")},
        }
    )
    frame.to_parquet(path)
    items = list(replay(path))
    trades = [t for t in items if isinstance(t, Trade)]
    assert [t.ts for t in trades][::4] == [1704067200.0, 1704067260.0]
    assert [b.kind for b in items if isinstance(b, BadRecord)] == ["missing_field"]


def test_a_trade_file_written_newest_first_replays_in_event_time(tmp_path: Path) -> None:
    path = tmp_path / "trades.csv"
    rows = [f"X,{i},100,1,buy,{1_700_000_100 - i}" for i in range(5)]
    path.write_text("symbol,trade_id,price,size,side,ts\n" + "\n".join(rows))
    assert [t.ts for t in replay(path) if isinstance(t, Trade)] == [
        1_700_000_096 + i for i in range(5)
    ]


def test_a_candle_given_twice_is_refused_not_doubled(tmp_path: Path) -> None:
    """Exports often repeat rows: a second candle of a symbol at the same time would double
    that window's volume and merge two candles' prices."""
    path = tmp_path / "candles.csv"
    rows = _candle_rows(1.7e9, 3)
    other = rows[1].replace(",10", ",99")  # the same candle with another volume
    path.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        + "\n".join([*rows, rows[0], other, "Y" + rows[0][1:]])
    )
    items = list(replay(path))
    assert [b.kind for b in items if isinstance(b, BadRecord)] == ["duplicate", "duplicate"]
    trades = [t for t in items if isinstance(t, Trade)]
    assert len(trades) == 4 * 4  # X's three candles and Y's one
    assert sum(t.size for t in trades if t.symbol == "X") == pytest.approx(30.0)


def _zipped(**members: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.csv", b""),
        ("binary.csv", bytes(range(256)) * 8),
        ("broken.parquet", b"PAR1 not really"),
        ("quotes.csv", b'symbol,ts\n"X,1\n' * 3),
        ("broken.zip", b"PK\x03\x04 not really"),
        ("empty.zip", _zipped()),
        ("two.zip", _zipped(**{"a.csv": "symbol,ts\n", "b.csv": "symbol,ts\n"})),
    ],
)
def test_an_unreadable_file_says_what_to_give(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"could not be read|neither trades"):
        list(replay(path))


@pytest.mark.parametrize("kind", ["candles", "trades"])
def test_a_file_is_turned_into_records_a_part_at_a_time_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Rows become Python objects a part at a time (held whole, a million trades took 330 MB
    more); the records, their order and the candles' trade ids do not change at the seams."""
    from rtml.pipelines import files

    path = tmp_path / f"{kind}.csv"
    if kind == "candles":
        rows = ["symbol,ts,open,high,low,close,volume", *_candle_rows(1.7e9, 50)]
        rows.insert(20, "X,not a time,1,2,0.5,1.5,10")
    else:
        rows = ["symbol,trade_id,price,size,side,ts"]
        rows += [f"X,{i},{100 + i % 7},1,buy,{1.7e9 + i}" for i in range(50)]
        rows.insert(20, "X,bad,-1,1,buy,1700000019.5")
    path.write_text("\n".join(rows) + "\n")
    whole = [repr(r) for r in replay(path)]
    monkeypatch.setattr(files, "ROWS_AT_ONCE", 7)
    assert [repr(r) for r in replay(path)] == whole
    assert sum("BadRecord" in r for r in whole) == 1 and len(whole) > 50


@pytest.mark.parametrize(
    ("name", "write"),
    [
        (  # an exchange's REST candles, saved as they came: an array of rows
            "BTCUSDT-1h-2024-01.json",
            lambda rows: json.dumps(
                [
                    [1704067200000 + 3_600_000 * i, str(o), str(h), str(lo), str(c), "7", *[0] * 6]
                    for i, (o, h, lo, c) in enumerate(rows)
                ]
            ),
        ),
        (  # an array of objects, numbers as text (as many APIs write prices)
            "BTCUSDT.json",
            lambda rows: json.dumps(
                [
                    {"time": 1704067200 + 3600 * i, "open": str(o), "high": h, "low": lo}
                    | {"close": c, "volume": 7}
                    for i, (o, h, lo, c) in enumerate(rows)
                ]
            ),
        ),
        (  # one object a line
            "BTCUSDT.jsonl",
            lambda rows: "\n".join(
                json.dumps({"ts": f"2024-01-01T{i:02d}:00:00Z", "open": o, "high": h}).replace(
                    "}", f', "low": {lo}, "close": {c}, "volume": 7}}'
                )
                for i, (o, h, lo, c) in enumerate(rows)
            ),
        ),
    ],
)
def test_a_json_file_of_candles_replays_as_a_csv_would(
    tmp_path: Path, name: str, write: Callable[[list[tuple[float, ...]]], str]
) -> None:
    """JSON was refused by its suffix: exchanges' REST APIs give candles as arrays of rows,
    and trade dumps are often one object a line."""
    rows: list[tuple[float, ...]] = [(100.0, 102.0, 99.0, 101.0), (101.0, 103.0, 100.0, 102.0)]
    path = tmp_path / name
    path.write_text(write(rows))
    got = list(replay(path))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 8
    assert [t.price for t in trades] == [p for row in rows for p in row]
    assert [t.ts for t in trades[::4]] == [1704067200.0, 1704070800.0]
    assert {t.symbol for t in trades} == {"BTCUSDT"}
    assert candle_profile(path) == CandleProfile(3600, 0.0)


def test_json_that_is_not_a_table_says_what_to_give(tmp_path: Path) -> None:
    path = tmp_path / "trades.json"
    path.write_text("[]")
    with pytest.raises(ConfigError, match="JSON array of objects"):
        list(replay(path))
    path.write_text('[{"price": 1}, ')
    with pytest.raises(ConfigError, match="could not be read"):
        list(replay(path))


@pytest.mark.parametrize(
    ("written", "hour"),
    [
        (lambda d: d.strftime("%b %d, %Y"), 0.0),  # quote sites' days: Jan 02, 2024
        (lambda d: d.strftime("%B %-d, %Y"), 0.0),  # January 2, 2024
        (lambda d: d.strftime("%d-%b-%Y"), 0.0),  # 02-Jan-2024
        (lambda d: d.strftime("%d %b %Y"), 0.0),
        (lambda d: d.strftime("%Y-%m-%d %-H:%M"), 9.5),  # an hour of one digit
        (lambda d: d.strftime("%-m/%-d/%Y %-I:%M:%S %p"), 9.5),  # 1/2/2024 9:30:00 AM
        (lambda d: (d + timedelta(hours=4)).strftime("%-m/%-d/%Y %-I:%M:%S %p"), 13.5),  # PM
        (lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC"), 9.5),
    ],
)
def test_times_written_as_people_and_vendors_write_them(
    tmp_path: Path, written: Callable[[datetime], str], hour: float
) -> None:
    """Every row of such a file was refused as not ISO-8601. A sample of the file tells its
    format, and the whole column is read in it; a row that format does not read is still
    refused on its own."""
    first = datetime(2024, 1, 2, 9, 30) if hour else datetime(2024, 1, 2)
    days = [written(first + timedelta(days=i)) for i in range(30)]
    rows = [f'"{d}",1,2,0.5,1.5,10' for d in days] + ['"the next day",1,2,0.5,1.5,10']
    path = tmp_path / "X.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(rows) + "\n")
    got = list(replay(path, candle_seconds=60))
    trades = [t for t in got if isinstance(t, Trade)]
    refused = [r for r in got if isinstance(r, BadRecord)]
    assert len(trades) == 4 * len(days) and [r.kind for r in refused] == ["wrong_type"]
    starts = [datetime.fromtimestamp(t.ts, UTC) for t in trades[::4]]
    assert [(s.year, s.month, s.day) for s in starts[:2]] == [(2024, 1, 2), (2024, 1, 3)]
    assert starts[0].hour + starts[0].minute / 60 == hour


@pytest.mark.parametrize(
    "header",
    [
        "Date,Open,High,Low,Last,Change,Settle,Volume",  # a futures exchange's daily candles
        "Date,Open,High,Low,Adj Close,Volume",  # a download whose only close is adjusted
        "Date,Open,High,Low,Close,Adj Close,Volume",  # both: the close is `Close`
    ],
)
def test_a_close_named_last_settle_or_adj_close_is_the_close(tmp_path: Path, header: str) -> None:
    """Such files had no column rtml calls `close`: neither trades nor candles, refused."""
    width = header.count(",") + 1
    closes = ["1.5", "1.6"]
    rows = []
    for day, close in zip(("2024-01-02", "2024-01-03"), closes, strict=True):
        values = {"Date": day, "Open": "1", "High": "2", "Low": "0.5", "Volume": "10"}
        names = header.split(",")
        first_close = next(n for n in names if n in ("Last", "Adj Close", "Close"))
        values |= {first_close: close}
        rows.append(",".join(values.get(n, "0.9") for n in names))
    assert all(row.count(",") + 1 == width for row in rows)
    path = tmp_path / "ES.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    trades = [t for t in replay(path, candle_seconds=86_400) if isinstance(t, Trade)]
    assert [t.price for t in trades[3::4]] == [1.5, 1.6]


def test_a_line_with_more_fields_than_the_header_is_refused_on_its_own(tmp_path: Path) -> None:
    """One such line (a stray comma, a note after a row) made the whole file unreadable."""
    path = tmp_path / "X.csv"
    path.write_text(
        "Date,Open,High,Low,Close,Volume\n"
        "2024-01-02,1,2,0.5,1.5,10\n"
        "2024-01-03,1,2,0.5,1.5,10,see note\n"
        "2024-01-04,1,2,0.5,1.5,10\n"
        "2024-01-05,1,2,0.5,1.5,10,,\n"
    )
    got = list(replay(path, candle_seconds=86_400))
    refused = [r for r in got if isinstance(r, BadRecord)]
    assert [str(r).split(" has ")[0] for r in refused] == [
        "wrong_type: line 3 of X.csv",
        "wrong_type: line 5 of X.csv",
    ]
    trades = [t for t in got if isinstance(t, Trade)]
    assert [datetime.fromtimestamp(t.ts, UTC).day for t in trades[::4]] == [2, 4]


@pytest.mark.parametrize("tickers", [("AAPL",), ("AAPL", "MSFT")])
def test_a_yfinance_download_replays_as_its_tickers_candles(
    tmp_path: Path, tickers: tuple[str, ...]
) -> None:
    """yfinance writes a download with three header lines (the field, the ticker, the index's
    name), and a download of several tickers side by side: it was refused, `Price` taken for
    a price. Each ticker's candles replay under its own symbol."""
    fields = ["Adj Close", "Close", "High", "Low", "Open", "Volume"]
    columns = [(f, t) for f in fields for t in tickers]
    lines = [
        ",".join(["Price", *(f for f, _ in columns)]),
        ",".join(["Ticker", *(t for _, t in columns)]),
        "Date" + "," * len(columns),
    ]
    values = {"Adj Close": 9.0, "Close": 1.5, "High": 2.0, "Low": 0.5, "Open": 1.0, "Volume": 7}
    for day in ("2024-01-02", "2024-01-03"):
        row = [day]
        for field, ticker in columns:
            shift = tickers.index(ticker) * 10 if field != "Volume" else 0
            row.append(str(values[field] + shift))
        lines.append(",".join(row))
    path = tmp_path / "download.csv"
    path.write_text("\n".join(lines) + "\n")
    got = list(replay(path, candle_seconds=86_400))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 4 * 2 * len(tickers)
    for i, ticker in enumerate(tickers):
        mine = [t for t in trades if t.symbol == ticker]
        assert [t.price for t in mine[:4]] == [
            1.0 + 10 * i,
            2.0 + 10 * i,
            0.5 + 10 * i,
            1.5 + 10 * i,
        ]
        assert sum(t.size for t in mine) == 14.0
    assert candle_profile(path) == CandleProfile(86_400, 0.0)


def test_a_quote_never_closed_does_not_swallow_the_rest_of_the_file(tmp_path: Path) -> None:
    """A stray quote (`"2024-01-03`) made the parser read the rest of the file as one field,
    and the whole file was refused. Quotes are then read as text, taken off each field's
    ends: the row with the stray quote reads as it was meant, and so do the rows after it."""
    path = tmp_path / "X.csv"
    path.write_text(
        "Date,Open,High,Low,Close,Volume\n"
        "2024-01-02,1,2,0.5,1.5,10\n"
        '"2024-01-03,1,2,0.5,1.6,10\n'
        "2024-01-04,1,2,0.5,1.7,10\n"
    )
    got = list(replay(path, candle_seconds=86_400))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 12
    assert [t.price for t in trades[3::4]] == [1.5, 1.6, 1.7]


@pytest.mark.parametrize("layout", ["plain", "a title above", "no header row"])
def test_an_excel_workbook_replays_its_first_sheet(tmp_path: Path, layout: str) -> None:
    """Workbooks were refused by their suffix. The first sheet is read as a table: its
    dates as the times they are, a title above the table passed over, a sheet without a
    header row read by its shape. An old `.xls` says to save it as `.xlsx` or CSV."""
    days = [datetime(2024, 1, 2) + timedelta(days=i) for i in range(5)]
    table = pd.DataFrame(
        {"Date": days, "Open": 1.0, "High": 2.0, "Low": 0.5, "Close": [1.5, 1.6, 1.7, 1.8, 1.9]}
    ).assign(Volume=10)
    path = tmp_path / "SPX.xlsx"
    if layout == "a title above":
        with pd.ExcelWriter(path) as book:
            pd.DataFrame([["S&P 500, daily"]]).to_excel(book, index=False, header=False)
            table.to_excel(book, index=False, startrow=2)
    else:
        table.to_excel(path, index=False, header=layout == "plain")
    got = list(replay(path, candle_seconds=86_400))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 20 and {t.symbol for t in trades} == {"SPX"}
    assert [t.price for t in trades[3::4]] == [1.5, 1.6, 1.7, 1.8, 1.9]
    assert trades[0].ts == datetime(2024, 1, 2, tzinfo=UTC).timestamp()
    assert candle_profile(path) == CandleProfile(86_400, 0.0)
    old = tmp_path / "SPX.xls"
    old.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"save it as \.xlsx or as CSV"):
        list(replay(old))


def test_a_quote_sites_german_download_replays_as_its_candles(tmp_path: Path) -> None:
    """German column names (`Datum, Zuletzt, Eröffn., Hoch, Tief, Vol.`), D.M.Y days, and
    numbers written `16.751,64` quoted in a comma-separated file: every column was unknown,
    and those numbers would have been text."""
    path = tmp_path / "DAX.csv"
    path.write_text(
        '"Datum","Zuletzt","Eröffn.","Hoch","Tief","Vol.","+/- %"\n'
        '"03.01.2024","16.538,39","16.769,36","16.772,84","16.503,49","85,55M","-1,37%"\n'
        '"02.01.2024","16.769,36","16.706,16","16.789,68","16.674,55","62,18M","0,44%"\n'
        '"29.12.2023","16.751,64","16.738,01","16.788,47","16.701,93","56,73M","-0,19%"\n',
        encoding="utf-8",
    )
    got = list(replay(path, candle_seconds=86_400))
    trades = [t for t in got if isinstance(t, Trade)]
    assert len(trades) == len(got) == 12 and {t.symbol for t in trades} == {"DAX"}
    assert [t.price for t in trades[:4]] == [16738.01, 16788.47, 16701.93, 16751.64]
    assert sum(t.size for t in trades[:4]) == pytest.approx(56_730_000)
    assert trades[0].ts == datetime(2023, 12, 29, tzinfo=UTC).timestamp()  # in event time


@pytest.mark.parametrize(
    "head",
    [
        ["Price,Close,High,Low,Open,Volume", "Ticker,AAPL,AAPL,AAPL,AAPL,AAPL", "Date,,,,,"],
        [],  # no header row: read by its shape
    ],
)
def test_a_line_of_too_many_fields_is_refused_on_its_own_whatever_the_layout(
    tmp_path: Path, head: list[str]
) -> None:
    """The refusal was the headered read's only: in a yfinance download or a file without a
    header row, one such line still made the whole file unreadable."""
    rows = [
        "1704153600,1.5,2,0.5,1,7",
        "1704240000,1.5,2,0.5,1,7,a note",
        "1704326400,1.5,2,0.5,1,7",
    ]
    if not head:  # time, open, high, low, close, volume
        rows = [
            ",".join([r.split(",")[0], "1", "2", "0.5", "1.5", *r.split(",")[5:]]) for r in rows
        ]
    path = tmp_path / "AAPL.csv"
    path.write_text("\n".join([*head, *rows]) + "\n")
    got = list(replay(path, candle_seconds=86_400))
    refused = [r for r in got if isinstance(r, BadRecord)]
    assert [str(r).split(" has ")[0] for r in refused] == [
        f"wrong_type: line {len(head) + 2} of AAPL.csv"
    ]
    trades = [t for t in got if isinstance(t, Trade)]
    assert [t.ts for t in trades[::4]] == [1704153600.0, 1704326400.0]


@pytest.mark.parametrize(
    ("name", "lines", "expected"),
    [
        (  # Dukascopy's forex ticks: quotes, read as trades at the mid, of both sides' sizes
            "EURUSD_Ticks_01.01.2025-01.01.2025.csv",
            [
                "Gmt time,Ask,Bid,AskVolume,BidVolume",
                "01.01.2025 00:00:00.500,1.03510,1.03490,1.5,0.5",
                "01.01.2025 00:00:01.000,1.03530,1.03510,2.25,1",
            ],
            [
                ("EURUSD", 1735689600.5, 1.035, 2.0, "buy"),
                ("EURUSD", 1735689601.0, 1.0352, 3.25, "buy"),
            ],
        ),
        (  # Dukascopy's candles: `Local time` with its zone written GMT+0100, a file of one day
            "EURUSD_Candlestick_1_M_BID_02.02.2025-02.02.2025.csv",
            [
                "Local time,Open,High,Low,Close,Volume",
                "02.02.2025 01:00:00.000 GMT+0100,1.035,1.036,1.034,1.0355,8",
            ],
            [
                ("EURUSD", 1738454400.0 + 15 * i, price, 2.0, "buy")
                for i, price in enumerate((1.035, 1.036, 1.034, 1.0355))
            ],
        ),
        (  # FIX's names: TransactTime, LastPx, LastQty, and Side 1 (buy) or 2 (sell)
            "ESH5.csv",
            [
                "TransactTime,Symbol,LastPx,LastQty,Side,TradeID",
                "20250102-14:30:00.250,ESH5,6000.25,3,2,a",
                "20250102-14:30:01.000,ESH5,6000.5,1,1,b",
            ],
            [
                ("ESH5", 1735828200.25, 6000.25, 3.0, "sell"),
                ("ESH5", 1735828201.0, 6000.5, 1.0, "buy"),
            ],
        ),
        (  # a time column of a name no vendor list has, found by its name
            "SOLUSD.csv",
            [
                "exec_ts,px,sz,close_time",
                "1735828200.5,190.5,2,1735828260",
                "1735828201,190.25,1,1",
            ],
            [
                ("SOLUSD", 1735828200.5, 190.5, 2.0, "buy"),
                ("SOLUSD", 1735828201.0, 190.25, 1.0, "buy"),
            ],
        ),
    ],
)
def test_quote_files_fix_exports_and_times_of_any_name_replay_as_trades(
    tmp_path: Path,
    name: str,
    lines: list[str],
    expected: list[tuple[str, float, float, float, str]],
) -> None:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    got = list(replay(path, candle_seconds=60))
    assert all(isinstance(t, Trade) for t in got), got
    trades = [t for t in got if isinstance(t, Trade)]
    assert [(t.symbol, t.ts, t.side) for t in trades] == [
        (s, ts, side) for s, ts, _, _, side in expected
    ]
    assert [t.price for t in trades] == pytest.approx([p for _, _, p, _, _ in expected])
    assert [t.size for t in trades] == pytest.approx([z for _, _, _, z, _ in expected])


def _headerless_rows(kind: str, seed: int) -> tuple[list[str], list[tuple[float, float, float]]]:
    """Lines of a headerless file of `kind`, and the (time, price, size) of each trade its
    rows are: a quote's at its mid and both sides' sizes, a candle's four prices in 15 s."""
    rng = random.Random(seed)
    lines, want = [], []
    price, start = 1.0 + rng.random(), 1_735_689_600 + 60 * rng.randrange(1_440 * 300)
    for i in range(40):
        ts = start + 60 * i
        day = time.strftime("%Y%m%d", time.gmtime(ts))
        clock = time.strftime("%H%M%S", time.gmtime(ts))
        iso = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
        price = round(price * (1 + rng.gauss(0, 0.001)), 5)
        other = round(price + rng.choice((1, 2, 3)) * 1e-5, 5)
        size, id_ = round(rng.random() * 5, 3), 7_000 + 3 * i
        if kind == "histdata_ticks":  # DateTime, Bid, Ask, Volume
            lines.append(f"{day} {clock}250,{price},{other},0")
            want.append((ts + 0.25, (price + other) / 2, 0.0))
        elif kind == "truefx":  # Symbol, DateTime, Bid, Ask
            lines.append(
                f"EUR/USD,{day} {time.strftime('%H:%M:%S', time.gmtime(ts))}.5,{price},{other}"
            )
            want.append((ts + 0.5, (price + other) / 2, 0.0))
        elif kind == "ask_bid_sizes":  # Time, Ask, Bid, AskVolume, BidVolume
            lines.append(f"{iso},{other},{price},{size},1.5")
            want.append((ts, (price + other) / 2, size + 1.5))
        elif kind == "symbol_ms_price_size":
            lines.append(f"ETHUSD,{ts * 1000 + 125},{price * 1000},{size}")
            want.append((ts + 0.125, price * 1000, size))
        elif kind == "iso_price_size_id":
            lines.append(f"{iso},{price * 100},{size},{id_}")
            want.append((ts, price * 100, size))
        elif kind == "ms_price_size_side":
            lines.append(f"{ts * 1000},{price * 100},{size},{rng.choice(('buy', 'SELL', 's'))}")
            want.append((ts, price * 100, size))
        else:  # a day and a time apart, then a candle (MetaTrader's, HistData's MT files)
            o, c = price, other
            high, low = max(o, c) + 1e-4, min(o, c) - 1e-4
            day_dotted = time.strftime("%Y.%m.%d", time.gmtime(ts))
            volume = rng.randrange(1, 900)  # not rising row by row: not an id
            clock = time.strftime("%H:%M", time.gmtime(ts))
            lines.append(f"{day_dotted},{clock},{o},{high},{low},{c},{volume}")
            want.append((ts, o, float(volume)))
    return lines, want


@pytest.mark.parametrize(
    ("kind", "name", "symbol"),
    [
        ("histdata_ticks", "DAT_ASCII_EURUSD_T_202501.csv", "EURUSD"),
        ("truefx", "EURUSD-2025-01.csv", "EUR/USD"),
        ("ask_bid_sizes", "gbpusd_ticks.csv", "gbpusd_ticks"),
        ("symbol_ms_price_size", "dump.csv", "ETHUSD"),
        ("iso_price_size_id", "AAPL_tape.csv", "AAPL_tape"),
        ("ms_price_size_side", "SOL.txt", "SOL"),
        ("date_time_candles", "DAT_MT_GBPUSD_M1_2024.csv", "GBPUSD"),
    ],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_a_headerless_file_of_any_layout_is_read_by_what_its_columns_hold(
    tmp_path: Path, kind: str, name: str, symbol: str, seed: int
) -> None:
    """A file without a header row whose width no exchange's layout has (a forex tick file, a
    vendor's tape, a terminal's export) was refused whole; one whose first line held a time
    written as text or a side was taken for a header and refused as having no known columns.
    Now its columns are told by what they hold: a time (or a day and a time of day), an id,
    a side, a symbol, and a candle's, a quote's or a trade's numbers."""
    lines, want = _headerless_rows(kind, seed)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    got = list(replay(path, candle_seconds=60))
    assert all(isinstance(t, Trade) for t in got), got[:3]
    trades = [t for t in got if isinstance(t, Trade)]
    assert {t.symbol for t in trades} == {symbol}
    if kind == "date_time_candles":  # four trades a candle: its open first, at its start
        assert len(trades) == 4 * len(want)
        firsts = trades[::4]
        assert [t.ts for t in firsts] == [ts for ts, _, _ in want]
        assert [t.price for t in firsts] == pytest.approx([p for _, p, _ in want])
        assert sum(t.size for t in trades[:4]) == pytest.approx(want[0][2])
        return
    assert [t.ts for t in trades] == pytest.approx([ts for ts, _, _ in want])
    assert [t.price for t in trades] == pytest.approx([p for _, p, _ in want])
    assert [t.size for t in trades] == pytest.approx([z for _, _, z in want])
    assert len({t.trade_id for t in trades}) == len(trades)


_T0 = 1_735_689_600  # 2025-01-01


def _api_payloads() -> list[tuple[str, Any]]:
    """(file name, content) of market data as APIs send it, each 12 trades or candles priced
    100.5 + i at _T0 + 60 i (a candle: open 100.5 + i)."""
    n, ms = range(12), [(_T0 + 60 * i) * 1000 for i in range(12)]
    bars = [{"o": 100.5 + i, "h": 101 + i, "l": 99 + i, "c": 100.75 + i, "v": 5} for i in n]
    return [
        (  # OKX: wrapped in `data`, `instId`, `px`, `sz`
            "okx.json",
            {
                "code": "0",
                "data": [
                    {
                        "instId": "BTC-USDT",
                        "tradeId": str(i),
                        "px": str(100.5 + i),
                        "sz": "0.1",
                        "side": "buy",
                        "ts": str(ms[i]),
                    }
                    for i in n
                ],
            },
        ),
        (  # Bybit: two levels down, `execId`
            "bybit.json",
            {
                "retCode": 0,
                "result": {
                    "category": "spot",
                    "list": [
                        {
                            "execId": str(i),
                            "symbol": "BTCUSDT",
                            "price": str(100.5 + i),
                            "size": "0.1",
                            "side": "Sell",
                            "time": str(ms[i]),
                        }
                        for i in n
                    ],
                },
            },
        ),
        (  # Kraken's REST trades: rows under the pair's name
            "kraken.json",
            {
                "error": [],
                "result": {
                    "XXBTZUSD": [
                        [str(100.5 + i), "0.1", _T0 + 60 * i + 0.25, "s", "l", "", 7 + i] for i in n
                    ],
                    "last": "1",
                },
            },
        ),
        (  # Polygon's aggregates: one-letter candles, `ticker` beside them
            "aggs.json",
            {
                "ticker": "AAPL",
                "results": [{**b, "t": m, "n": 3} for b, m in zip(bars, ms, strict=True)],
            },
        ),
        (  # Alpaca's bars: ISO times, `symbol` beside them
            "bars.json",
            {
                "bars": [
                    {**b, "t": f"2025-01-01T00:{i:02d}:00Z"} for i, b in zip(n, bars, strict=True)
                ],
                "symbol": "MSFT",
                "next_page_token": None,
            },
        ),
        (  # Alpaca's trades: `p`, `s` is the size, `i` the id
            "trades.json",
            {
                "trades": [
                    {
                        "t": f"2025-01-01T00:{i:02d}:00Z",
                        "x": "V",
                        "p": 100.5 + i,
                        "s": 10,
                        "c": ["@"],
                        "i": 50 + i,
                        "z": "C",
                    }
                    for i in n
                ],
                "symbol": "TSLA",
            },
        ),
        (  # Binance's REST aggTrades: `a`, `p`, `q`, `T`, `m`
            "BTCUSDT-aggTrades-2025-01-01.json",
            [
                {
                    "a": 9 + i,
                    "p": str(100.5 + i),
                    "q": "0.1",
                    "f": 1,
                    "l": 1,
                    "T": ms[i],
                    "m": i % 2 == 0,
                    "M": True,
                }
                for i in n
            ],
        ),
        (  # a trade a line, each with an object of its own inside: not a wrapper
            "nested.jsonl",
            [
                {
                    "symbol": "SOLUSD",
                    "id": 9 + i,
                    "price": 100.5 + i,
                    "size": 1,
                    "ts": ms[i],
                    "venue": {"name": "X", "mic": "XOFF"},
                }
                for i in n
            ],
        ),
        (  # Binance's trade stream, one message a line
            "stream.jsonl",
            [
                {
                    "e": "trade",
                    "E": ms[i] + 3,
                    "s": "BNBBTC",
                    "t": 9 + i,
                    "p": str(100.5 + i),
                    "q": "0.1",
                    "T": ms[i],
                    "m": True,
                    "M": True,
                }
                for i in n
            ],
        ),
        (  # Binance's combined streams: each message wraps its trade
            "combined.jsonl",
            [
                {
                    "stream": "ethusdt@trade",
                    "data": {
                        "e": "trade",
                        "s": "ETHUSDT",
                        "t": 9 + i,
                        "p": str(100.5 + i),
                        "q": "0.1",
                        "T": ms[i],
                        "m": False,
                    },
                }
                for i in n
            ],
        ),
        (  # Kraken's websocket (v2): each message an array of trades, after the answer
            "kraken_ws.jsonl",
            [
                {"method": "subscribe", "result": {"channel": "trade"}, "success": True},
                *(
                    {
                        "channel": "trade",
                        "type": "update",
                        "data": [
                            {
                                "symbol": "BTC/USD",
                                "side": "buy",
                                "price": 100.5 + i,
                                "qty": 0.1,
                                "ord_type": "market",
                                "trade_id": 9 + i,
                                "timestamp": f"2025-01-01T00:{i:02d}:00.000000Z",
                            }
                        ],
                    }
                    for i in n
                ),
            ],
        ),
    ]


@pytest.mark.parametrize(
    ("name", "content"), _api_payloads(), ids=[name for name, _ in _api_payloads()]
)
def test_market_data_saved_as_an_api_sent_it_replays(
    tmp_path: Path, name: str, content: Any
) -> None:
    """REST responses wrap their records in an object (refused: its keys were taken for
    columns), APIs name fields with one letter (refused: no column was rtml's), and stream
    messages wrap each trade (refused). Each is read as the trades or candles it holds, of
    the instrument it names."""
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(line) + "\n" for line in content))
    else:
        path.write_text(json.dumps(content))
    got = list(replay(path, candle_seconds=60))
    assert all(isinstance(t, Trade) for t in got), got[:3]
    trades = [t for t in got if isinstance(t, Trade)]
    symbol = {
        "okx.json": "BTC-USDT",
        "bybit.json": "BTCUSDT",
        "kraken.json": "XXBTZUSD",
        "aggs.json": "AAPL",
        "bars.json": "MSFT",
        "trades.json": "TSLA",
        "BTCUSDT-aggTrades-2025-01-01.json": "BTCUSDT",
        "stream.jsonl": "BNBBTC",
        "combined.jsonl": "ETHUSDT",
        "kraken_ws.jsonl": "BTC/USD",
        "nested.jsonl": "SOLUSD",
    }[name]
    assert {t.symbol for t in trades} == {symbol}
    firsts = trades[::4] if len(trades) == 48 else trades  # a candle is four trades
    assert len(firsts) == 12
    assert [t.price for t in firsts] == pytest.approx([100.5 + i for i in range(12)])
    offset = 0.25 if name == "kraken.json" else 0.0
    assert [t.ts for t in firsts] == pytest.approx([_T0 + 60 * i + offset for i in range(12)])
    assert len({t.trade_id for t in trades}) == len(trades)


def _typed_files(tmp_path: Path) -> dict[str, Path]:
    """The same 12 trades (or daily candles) in the types file formats give them."""
    import bz2
    import decimal
    import lzma

    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import feather

    n = 12
    starts = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=60 * i) for i in range(n)]
    paths: dict[str, Path] = {}
    decimals = pa.table(
        {
            "symbol": pa.array(["BTC-USD"] * n).dictionary_encode(),
            "trade_id": pa.array(range(n), pa.uint64()),
            "price": pa.array(
                [decimal.Decimal("100.25") + i for i in range(n)], pa.decimal128(18, 8)
            ),
            "size": pa.array([decimal.Decimal("0.5")] * n, pa.decimal128(18, 8)),
            "side": ["buy"] * n,
            "ts": pa.array(starts, pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(decimals, paths.setdefault("decimal", tmp_path / "decimal.parquet"))
    feather.write_feather(decimals, paths.setdefault("feather", tmp_path / "trades.feather"))
    nullable = pd.DataFrame(
        {
            "ts": pd.Series(starts),
            "price": pd.array([100.25 + i for i in range(n)], dtype="Float64"),
            "size": pd.array([0.5] * n, dtype="Float64"),
            "symbol": pd.array(["BTC-USD"] * n, dtype="string"),
            "trade_id": pd.array(range(n), dtype="Int64"),
        }
    )
    nullable.to_parquet(paths.setdefault("nullable", tmp_path / "nullable.parquet"))
    days = pa.table(
        {
            "date": pa.array([date(2025, 1, 1) + timedelta(days=i) for i in range(n)], pa.date32()),
            "open": [100.25 + i for i in range(n)],
            "high": [101.0 + i for i in range(n)],
            "low": [99.0 + i for i in range(n)],
            "close": [100.5 + i for i in range(n)],
            "volume": pa.array([5] * n, pa.int64()),
        }
    )
    pq.write_table(days, paths.setdefault("days", tmp_path / "BTC-USD.parquet"))
    text = nullable.assign(ts=[s.isoformat() for s in starts]).to_csv(index=False).encode()
    paths["bz2"] = tmp_path / "BTC-USD.csv.bz2"
    paths["bz2"].write_bytes(bz2.compress(text))
    paths["xz"] = tmp_path / "BTC-USD.csv.xz"
    paths["xz"].write_bytes(lzma.compress(text))
    return paths


@pytest.mark.parametrize("kind", ["decimal", "feather", "nullable", "days", "bz2", "xz"])
def test_files_in_the_types_and_compressions_formats_have_replay_as_their_trades(
    tmp_path: Path, kind: str
) -> None:
    """Parquet's decimal prices and day dates had every row refused (`price must be a number,
    got Decimal`, `ts must be a number, got date`); Feather files and bzip2 or xz text were
    refused whole. Each is the trades (or candles) it holds."""
    path = _typed_files(tmp_path)[kind]
    got = list(replay(path, candle_seconds=86_400 if kind == "days" else 60))
    assert all(isinstance(t, Trade) for t in got), got[:3]
    trades = [t for t in got if isinstance(t, Trade)]
    firsts = trades[::4] if kind == "days" else trades
    assert [t.price for t in firsts] == pytest.approx([100.25 + i for i in range(12)])
    step = 86_400 if kind == "days" else 60
    assert [t.ts for t in firsts] == [1_735_689_600.0 + step * i for i in range(12)]
    assert {t.symbol for t in trades} == {"BTC-USD"}


@pytest.mark.parametrize("name", ["cut.csv.gz", "cut.csv.xz", "cut.csv.bz2", "junk.feather"])
def test_a_compressed_file_cut_short_or_a_broken_arrow_file_says_so(
    tmp_path: Path, name: str
) -> None:
    """A download cut short ended the replay with an `EOFError` traceback."""
    import bz2
    import gzip as gz
    import lzma

    text = b"ts,price,size,symbol\n" + b"".join(
        b"2025-01-01T00:00:%02dZ,100,1,X\n" % i for i in range(50)
    )
    compress: dict[str, Callable[[bytes], bytes]] = {
        ".gz": gz.compress,
        ".xz": lzma.compress,
        ".bz2": bz2.compress,
    }
    suffix = Path(name).suffix
    packed = compress[suffix](text) if suffix in compress else b"not an arrow file " * 10
    path = tmp_path / name
    path.write_bytes(packed[: len(packed) // 2] if "cut" in name else packed)
    with pytest.raises(ConfigError, match="could not be read"):
        list(replay(path))


def _day_file(folder: Path, symbol: str, day: int, rng: random.Random) -> list[Trade]:
    """A file of `symbol`'s trades on `day` (of 2025), in no order, with a bad row; returns
    the trades it holds."""
    start = 1_735_689_600 + 86_400 * day
    trades = [
        Trade(symbol, f"{symbol}-{day}-{i}", round(100 + rng.random(), 4), 1.0, "buy", start + t)
        for i, t in enumerate(sorted(rng.sample(range(86_400), 30)))
    ]
    rows = [f"{t.symbol},{t.trade_id},{t.price},{t.size},{t.side},{t.ts}" for t in trades]
    rng.shuffle(rows)
    rows.insert(5, f"{symbol},bad-{day},abc,1,buy,{start}")  # refused on its own
    path = folder / f"{symbol}-trades-2025-01-{day + 1:02d}.csv"
    path.write_text("\n".join(["symbol,trade_id,price,size,side,ts", *rows]) + "\n")
    return trades


def test_a_folder_of_daily_files_replays_as_one_market_in_event_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History comes a file a day and a file a symbol; `--source` took one file. A folder is
    now the market its files hold: every trade once, in event time across files, each bad
    row refused, and a file read only once the replay reaches it (two symbols' files of one
    day at once, never a later day's)."""
    from rtml.pipelines import folders

    rng = random.Random(3)
    want = [
        t for day in (2, 0, 1) for s in ("ETH", "BTC") for t in _day_file(tmp_path, s, day, rng)
    ]
    (tmp_path / "notes.md").write_text("not a market file")
    open_now, most = set[Path](), 0
    real = folders.replay

    def watched(path: Path, *args: Any) -> Iterator[Trade | BadRecord]:
        nonlocal most
        open_now.add(path)
        most = max(most, len(open_now))
        yield from real(path, *args)
        open_now.discard(path)

    monkeypatch.setattr(folders, "replay", watched)
    got = list(folders.replay_folder(tmp_path))
    trades = [t for t in got if isinstance(t, Trade)]
    assert [b.kind for b in got if isinstance(b, BadRecord)] == ["wrong_type"] * 6
    assert [t.ts for t in trades] == sorted(t.ts for t in want)
    assert sorted(trades, key=lambda t: t.trade_id) == sorted(want, key=lambda t: t.trade_id)
    assert most == 2


def test_a_folder_without_market_files_says_what_to_put_in_it(tmp_path: Path) -> None:
    from rtml.pipelines import folders

    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ConfigError, match="holds no replay file"):
        list(folders.replay_folder(tmp_path))


def test_candle_files_of_consecutive_days_share_no_trade_id(tmp_path: Path) -> None:
    """A candle's four trades were named by its row (`c0-0`): the next day's file of the same
    symbol named its own the same, so fed after the first, every one of its trades was
    dropped as seen before. They are named by the candle's start: a file fed twice is the
    same trades again (dropped as duplicates), the next day's are new."""
    ids = []
    for day in range(2):
        start = 1_735_689_600 + 86_400 * day
        path = tmp_path / f"BTCUSDT-1m-2025-01-0{day + 1}.csv"
        path.write_text(
            "ts,open,high,low,close,volume\n"
            + "".join(f"{start + 60 * m},100,101,99,100.5,4\n" for m in range(30))
        )
        ids.append([t.trade_id for t in replay(path) if isinstance(t, Trade)])
        assert ids[-1] == [t.trade_id for t in replay(path) if isinstance(t, Trade)]
    assert len(ids[0]) == len(set(ids[0])) == 120
    assert not set(ids[0]) & set(ids[1])


def test_a_refused_row_says_the_value_that_is_wrong_not_one_rtml_made(tmp_path: Path) -> None:
    """A price of 400 digits was `not_finite` with all 400 in the reason (it is a number
    too large: `out_of_range`, quoted in part); a quote with one side's size below zero was
    refused for the two sides' sum, a number the file does not hold."""
    trades, quotes = tmp_path / "BTCUSD.csv", tmp_path / "EURUSD.csv"
    trades.write_text(f"ts,price,size\n1735689600,{'1' + '0' * 400},1\n1735689601,5,1\n")
    quotes.write_text(
        "Gmt time,Ask,Bid,AskVolume,BidVolume\n"
        "2025-01-01 00:00:01,1.1,1.0,2,-3\n"
        "2025-01-01 00:00:02,1.1,1.0,2,3\n"
    )
    got = [*replay(trades), *replay(quotes)]
    bad = [b for b in got if isinstance(b, BadRecord)]
    assert [b.kind for b in bad] == ["out_of_range", "non_positive"]
    assert len(str(bad[0])) < 200
    assert str(bad[1]).endswith("got -3.0")
    assert [t.size for t in got if isinstance(t, Trade)] == [1.0, 5.0]
