"""Trade sources: replay files (rtml's canonical format and vendors' presets, read as
declared, never guessed) and a live feed against a local server in Kraken's v2 format."""

from __future__ import annotations

import bisect
import gzip
import io
import json
import math
import statistics
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from websockets.sync.server import ServerConnection, serve

from rtml.app.commands.options import check_candle_file
from rtml.app.demo import Demo, DemoRun
from rtml.errors import ConfigError, RtmlError
from rtml.pipelines.features.candles import CandleBuilder
from rtml.pipelines.features.feed import paced
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.market import files, kraken
from rtml.pipelines.market.files import Reading, detect, matches, replay
from rtml.pipelines.market.presets import PRESETS
from rtml.pipelines.market.sessions import candle_profile
from rtml.pipelines.market.sources import REGIMES, SyntheticMarket
from rtml.records import BadRecord, Trade
from rtml.settings import Settings


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


def _candle_rows(start: float, n: int, scale: float = 1.0) -> list[str]:
    return [f"X,{(start + 60 * i) * scale:.0f},1,2,0.5,1.5,10" for i in range(n)]


def _trades(items: list[Trade | BadRecord]) -> list[Trade]:
    return [t for t in items if isinstance(t, Trade)]


def _bad(items: list[Trade | BadRecord]) -> list[BadRecord]:
    return [b for b in items if isinstance(b, BadRecord)]


# -- the canonical format ---------------------------------------------------------------------


def test_canonical_trades_with_a_column_mapping_and_bad_rows(tmp_path: Path) -> None:
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
    items = list(replay(path, Reading(columns=mapping)))
    assert [type(i) for i in items] == [Trade, BadRecord, Trade]
    assert isinstance(items[1], BadRecord) and items[1].kind == "non_positive"
    assert isinstance(items[2], Trade) and items[2].ts == 1767225602.0


def test_canonical_candles_reproduce_their_ohlcv(tmp_path: Path) -> None:
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


def _zipped(**members: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return out.getvalue()


@pytest.mark.parametrize(
    "name", ["X.csv", "X.CSV.GZ", "X.csv.bz2", "X.csv.xz", "X.zip", "X.parquet", "X.feather"]
)
def test_the_canonical_format_reads_alike_in_every_container(tmp_path: Path, name: str) -> None:
    text = "symbol,ts,open,high,low,close,volume\n" + "\n".join(_candle_rows(1.7e9, 3)) + "\n"
    plain = tmp_path / "plain.csv"
    plain.write_text(text)
    path = tmp_path / name
    if name.endswith(".zip"):
        path.write_bytes(_zipped(**{"X.csv": text}))
    elif name.endswith((".parquet", ".feather")):
        frame = pd.read_csv(plain)
        frame.to_parquet(path) if name.endswith(".parquet") else frame.to_feather(path)
    else:
        frame = pd.read_csv(plain)
        frame.to_csv(path, index=False)  # pandas compresses by the suffix, in any case
    assert list(replay(path)) == list(replay(plain))
    assert len(_trades(list(replay(path)))) == 12


@pytest.mark.parametrize("scale", [1, 1e3, 1e6, 1e9])
def test_epoch_times_in_any_unit_are_the_same_seconds(tmp_path: Path, scale: float) -> None:
    path = tmp_path / "candles.csv"
    path.write_text(
        "symbol,ts,open,high,low,close,volume\n" + "\n".join(_candle_rows(1.7e9, 3, scale))
    )
    trades = _trades(list(replay(path)))
    assert [t.ts for t in trades][::4] == [1.7e9, 1.7e9 + 60, 1.7e9 + 120]
    profile = candle_profile(path)
    assert profile is not None and profile.seconds == 60


def test_a_messy_canonical_file_yields_every_row_good_or_bad(tmp_path: Path) -> None:
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
    trades, bad = _trades(items), _bad(items)
    assert {t.symbol for t in trades} == {"7203"}
    assert [t.ts for t in trades][::4] == [999.0, 1000.0]  # in event time, not text order
    assert sorted(b.kind for b in bad) == ["not_finite", "wrong_type", "wrong_type"]
    assert len(items) == 2 * 4 + 3  # two whole candles, three rows refused once each


def test_a_candle_given_twice_is_refused_not_doubled(tmp_path: Path) -> None:
    path = tmp_path / "candles.csv"
    rows = _candle_rows(1.7e9, 3)
    other = rows[1].replace(",10", ",99")  # the same candle with another volume
    path.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        + "\n".join([*rows, rows[0], other, "Y" + rows[0][1:]])
    )
    items = list(replay(path))
    assert [b.kind for b in _bad(items)] == ["duplicate", "duplicate"]
    assert len(_trades(items)) == 4 * 4  # X's three candles and Y's one


def test_a_trade_file_written_newest_first_replays_in_event_time(tmp_path: Path) -> None:
    path = tmp_path / "trades.csv"
    rows = [f"X,{i},100,1,buy,{1_700_000_100 - i}" for i in range(5)]
    path.write_text("symbol,trade_id,price,size,side,ts\n" + "\n".join(rows))
    assert [t.ts for t in _trades(list(replay(path)))] == [1_700_000_096 + i for i in range(5)]


@pytest.mark.parametrize("far", ["9999-12-31", "99999999999999999999999"])
def test_a_candle_past_the_years_rtml_stores_is_refused(tmp_path: Path, far: str) -> None:
    path = tmp_path / "X.csv"
    path.write_text(
        f"ts,open,high,low,close,volume\n2024-01-02,1,2,0.5,1.5,10\n{far},1,2,0.5,1.5,10\n"
    )
    got = list(replay(path, candle_seconds=86_400))
    assert [r.kind for r in _bad(got)] == ["out_of_range"]
    assert [t.ts for t in _trades(got)][::4] == [1_704_153_600.0]


def test_a_line_with_more_fields_than_the_header_is_refused_on_its_own(tmp_path: Path) -> None:
    path = tmp_path / "X.csv"
    rows = _candle_rows(1.7e9, 3)
    path.write_text(
        "symbol,ts,open,high,low,close,volume\n" + "\n".join([rows[0], rows[1] + ",7", rows[2]])
    )
    got = list(replay(path))
    assert len(_bad(got)) == 1 and "line 3" in str(_bad(got)[0])
    assert len(_trades(got)) == 8


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16"])
def test_a_file_in_another_encoding_is_read_as_charset_normalizer_names_it(
    tmp_path: Path, encoding: str
) -> None:
    rows = ["symbol,ts,open,high,low,close,volume,note"]
    rows += [f"DAX,2024-01-0{d},100,102,99,101,7,café à €{d}" for d in range(2, 9)]
    path = tmp_path / "DAX.csv"
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode(encoding))
    trades = _trades(list(replay(path, candle_seconds=86_400)))
    assert len(trades) == 4 * 7 and {t.symbol for t in trades} == {"DAX"}


def test_a_file_that_is_not_canonical_names_what_is_missing_and_the_command_to_try(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.csv"
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"candles lack close, high, low, open, ts.*--column"):
        list(replay(path))
    kraken_candles = tmp_path / "XBTUSD_1.csv"
    kraken_candles.write_text("1704067200,42283.5,42298.6,42261.0,42298.6,35.9,120\n")
    with pytest.raises(ConfigError, match=r"preset kraken-ohlcvt.*try --format kraken-ohlcvt"):
        list(replay(kraken_candles))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.csv", b""),
        ("binary.csv", bytes(range(256)) * 8),
        ("broken.parquet", b"PAR1 not really"),
        ("broken.zip", b"PK\x03\x04 not really"),
        ("two.zip", _zipped(**{"a.csv": "symbol,ts\n", "b.csv": "symbol,ts\n"})),
        ("prices.ods", b"PK\x03\x04"),
        ("prices.xlsx", b"PK\x03\x04"),
    ],
)
def test_an_unreadable_file_says_what_to_give(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"could not be read|canonical|give CSV"):
        list(replay(path))


@pytest.mark.parametrize("kind", ["candles", "trades"])
def test_a_file_is_turned_into_records_a_part_at_a_time_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
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
    assert len(_bad(list(replay(path)))) == 1


# -- presets: vendors' formats as data ------------------------------------------------------

_T = 1_704_067_200  # 2024-01-01 00:00 UTC

VENDOR_FILES: list[tuple[str, str, str, str, list[float], list[float]]] = [
    # preset, file name, content, symbol, the first two times, the first row's prices
    (
        "binance-klines",
        "BTCUSDT-1m-2024-01.csv",
        f"{_T}000,42283.58,42298.62,42261.02,42298.61,35.92,{_T + 59}999,1518892.1,1284,17.45,"
        f"737783.2,0\n{_T + 60}000000,42298.62,42320.00,42298.61,42298.61,21.10,{_T + 119}999"
        "999,892557.9,930,9.01,381122.4,0\n",  # milliseconds, then microseconds (2025 on)
        "BTCUSDT",
        [_T, _T + 60],
        [42283.58, 42298.62, 42261.02, 42298.61],
    ),
    (
        "binance-aggtrades",
        "BTCUSDT-aggTrades-2024-01.csv",
        f"100,42000.5,0.1,200,201,{_T}000,True,True\n101,42001.0,0.2,202,202,{_T}500,False,True\n",
        "BTCUSDT",
        [_T, _T + 0.5],
        [42000.5],
    ),
    (
        "binance-trades",
        "BTCUSDT-trades-2024-01-15.csv",
        f"3000000001,42000.5,0.1,4200.05,{_T}000,true,true\n"
        f"3000000002,42001.0,0.2,8400.2,{_T}500,false,true\n",
        "BTCUSDT",
        [_T, _T + 0.5],
        [42000.5],
    ),
    (
        "kraken-ohlcvt",
        "XBTUSD_1.csv",
        f"{_T},42283.5,42298.6,42261.0,42298.6,35.9,120\n"
        f"{_T + 60},42298.6,42320,42298.6,42298.6,21.1,80\n",
        "XBTUSD",
        [_T, _T + 60],
        [42283.5, 42298.6, 42261.0, 42298.6],
    ),
    (
        "kraken-trades",
        "XBTUSD.csv",
        f"{_T},42000.5,0.1\n{_T}.5,42001.0,0.2\n",
        "XBTUSD",
        [_T, _T + 0.5],
        [42000.5],
    ),
    (
        "dukascopy",
        "EURUSD_Candlestick_1_M_BID_01.01.2024-02.01.2024.csv",
        "Gmt time,Open,High,Low,Close,Volume\n01.01.2024 00:00:00.000,1.1,1.2,1.0,1.15,10\n"
        "01.01.2024 00:01:00.000,1.15,1.2,1.1,1.12,12\n",
        "EURUSD",
        [_T, _T + 60],
        [1.1, 1.2, 1.0, 1.15],
    ),
    (
        "histdata",
        "DAT_ASCII_EURUSD_M1_2024.csv",
        "20231231 190000;1.1;1.2;1.0;1.15;0\n20231231 190100;1.15;1.2;1.1;1.12;0\n",  # EST
        "EURUSD",
        [_T, _T + 60],
        [1.1, 1.2, 1.0, 1.15],
    ),
    (
        "metatrader",
        "EURUSD_M1.txt",
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
        "2024.01.01\t00:00:00\t1.1\t1.2\t1.0\t1.15\t10\t0\t2\n"
        "2024.01.01\t00:01:00\t1.15\t1.2\t1.1\t1.12\t12\t0\t2\n",
        "EURUSD",
        [_T, _T + 60],
        [1.1, 1.2, 1.0, 1.15],
    ),
    (
        "yahoo",
        "SPX.csv",
        "Date,Open,High,Low,Close,Adj Close,Volume\n2024-01-01,10,12,9,11,11,100\n"
        "2024-01-02,11,13,10,12,12,\n",
        "SPX",
        [_T, _T + 86_400],
        [10, 12, 9, 11],
    ),
    (
        "stooq",
        "aapl.us.txt",
        "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>\n"
        "AAPL.US,1,20240101,000000,1.1,1.2,1.0,1.15,10,0\n"
        "AAPL.US,1,20240101,000100,1.15,1.2,1.1,1.12,10,0\n",
        "AAPL.US",
        [_T, _T + 60],
        [1.1, 1.2, 1.0, 1.15],
    ),
    (
        "cryptodatadownload",
        "Binance_BTCUSDT_1h.csv",
        "https://www.CryptoDataDownload.com\n"
        "Unix,Date,Symbol,Open,High,Low,Close,Volume BTC,Volume USDT,tradecount\n"
        f"{_T + 3600}000,2024-01-01 01:00:00,BTCUSDT,42300,42400,42250,42350,12.5,529000,900\n"
        f"{_T}000,2024-01-01 00:00:00,BTCUSDT,42283,42310,42200,42300,10.0,423000,800\n",
        "BTCUSDT",
        [_T, _T + 3600],
        [42283, 42310, 42200, 42300],
    ),
    (
        "ccxt-ohlcv",
        "BTCUSDT.json",
        json.dumps(
            [[(_T + 60 * i) * 1000, 100 + i, 102 + i, 99 + i, 101 + i, 7] for i in range(2)]
        ),
        "BTCUSDT",
        [_T, _T + 60],
        [100, 102, 99, 101],
    ),
    (
        "ccxt-trades",
        "trades.json",
        json.dumps(
            [
                {"id": str(i), "timestamp": (_T + i) * 1000, "datetime": "", "symbol": "BTC/USDT"}
                | {"side": "sell", "price": 100.5 + i, "amount": 0.5, "cost": 50}
                for i in range(2)
            ]
        ),
        "BTC/USDT",
        [_T, _T + 1],
        [100.5],
    ),
]


@pytest.mark.parametrize(
    ("preset", "name", "content", "symbol", "times", "prices"),
    VENDOR_FILES,
    ids=[v[0] for v in VENDOR_FILES],
)
def test_each_preset_reads_its_vendors_file_and_auto_finds_it(
    tmp_path: Path,
    preset: str,
    name: str,
    content: str,
    symbol: str,
    times: list[float],
    prices: list[float],
) -> None:
    path = tmp_path / name
    path.write_text(content)
    said: list[str] = []
    got = list(replay(path, Reading(preset), candle_seconds=60 if preset != "yahoo" else 86_400))
    trades = _trades(got)
    assert not _bad(got) and trades, got
    assert {t.symbol for t in trades} == {symbol}
    candles = PRESETS[preset].kind == "candles"
    assert [t.ts for t in (trades[::4] if candles else trades)][:2] == times
    assert [t.price for t in trades[: len(prices)]] == pytest.approx(prices)
    # `auto` finds it, and says which it used; no preset before it in the order reads it
    found = files.read_table(path, Reading("auto"), say=said.append).preset.name
    assert found == preset and said and preset in said[0]
    assert detect(path) is not None and detect(path).name == preset  # type: ignore[union-attr]


def test_no_preset_reads_another_vendors_file(tmp_path: Path) -> None:
    """A new vendor is one entry: it must not change how any other vendor's file is read, so
    each fixture is read by its own preset only."""
    for preset, name, content, *_ in VENDOR_FILES:
        path = tmp_path / name
        path.write_text(content)
        readers = [p for p in PRESETS.values() if matches(path, p)]
        assert [p.name for p in readers] == [preset], name


# -- files users brought: each reads, through the canonical format or a preset, or its error
# names the preset or the options to use ---------------------------------------------------

USERS_FILES: list[tuple[str, str, dict[str, object]]] = [
    # file name, content, the Reading that reads it
    ("bom.csv", "\ufeffsymbol,ts,open,high,low,close,volume\nX,1700000000,1,2,0.5,1.5,10\n", {}),
    (" case.csv", " Symbol,TS,Open,High,Low,Close, Volume \nX,1700000000,1,2,0.5,1.5,10\n", {}),
    (
        "semi.csv",
        "symbol;ts;open;high;low;close;volume\nX;1700000000;1;2;0.5;1.5;10\n",
        {"delimiter": ";"},
    ),
    (
        "tabs.tsv",
        "symbol\tts\topen\thigh\tlow\tclose\tvolume\nX\t1700000000\t1\t2\t0.5\t1.5\t10\n",
        {"delimiter": "\t"},
    ),
    ("IDX.csv", "date,open,high,low,close\n2024-01-02,10,12,9,11\n", {"columns": {"ts": "date"}}),
    (
        "EURUSD.csv",
        "Date,Time,Open,High,Low,Close,Volume\n2024.01.02,09:00,1.1,1.2,1.0,1.1,0\n",
        {"columns": {"date": "Date", "time": "Time"}, "time": "%Y.%m.%d %H:%M"},
    ),
    (
        "EU.csv",
        "Date,Open,High,Low,Close,Volume\n30.01.2024,1,2,0.5,1.5,10\n",
        {"columns": {"ts": "Date"}, "time": "%d.%m.%Y"},
    ),
    (
        "BYBIT.csv",
        "startTime,openPrice,highPrice,lowPrice,closePrice,volume,turnover\n1704067200,100,102,99,101,7,1\n",
        {
            "columns": {
                "ts": "startTime",
                "open": "openPrice",
                "high": "highPrice",
                "low": "lowPrice",
                "close": "closePrice",
            }
        },
    ),
    (
        "XBTUSD.csv",
        "timestamp,symbol,side,size,price,tickDirection,trdMatchID\n2019-10-01T00:00:00.5Z,XBTUSD,Buy,100,8300.5,PlusTick,a1\n",
        {"columns": {"ts": "timestamp", "trade_id": "trdMatchID"}},
    ),
    ("ETHUSDT-1m-2024-01.zip", "", {"format": "binance-klines"}),
]


@pytest.mark.parametrize(("name", "content", "how"), USERS_FILES, ids=[u[0] for u in USERS_FILES])
def test_every_file_users_brought_reads_as_declared(
    tmp_path: Path, name: str, content: str, how: dict[str, object]
) -> None:
    path = tmp_path / name.strip()
    if name.endswith(".zip"):  # data.binance.vision: a zip of one headerless CSV
        rows = [
            f"{_T + 60 * i}000,{100 + i},{101 + i},{99 + i},{100.5 + i},5,0,0,0,0,0,0"
            for i in range(3)
        ]
        path.write_bytes(_zipped(**{name.replace(".zip", ".csv"): "\n".join(rows) + "\n"}))
    else:
        path.write_text(content)
    reading = Reading(**how)  # type: ignore[arg-type]
    got = list(replay(path, reading, candle_seconds=86_400 if "20" in content[:60] else 60))
    assert _trades(got) and not _bad(got), got
    if how:  # as it is, it is refused, and the error says what to give
        with pytest.raises(ConfigError, match=r"--format|--column|could not be read"):
            list(replay(path))


# -- sessions -------------------------------------------------------------------------------


def _fx_hours(path: Path, weeks: int = 3) -> list[float]:
    """Hourly EUR/USD with its weekends missing (Friday 22:00 to Sunday 22:00 UTC)."""
    hours, rows = [], ["Gmt time,Open,High,Low,Close,Volume"]
    t = datetime(2024, 1, 7, 22, tzinfo=UTC).timestamp()  # a Sunday evening
    end = t + weeks * 7 * 86_400
    i = 0
    while t < end:
        moment = datetime.fromtimestamp(t, UTC)
        closed = moment.weekday() == 5 or (moment.weekday() == 4 and moment.hour >= 22)
        closed |= moment.weekday() == 6 and moment.hour < 22
        if not closed:
            price = 1.1 + 0.001 * (i % 7)
            stamp = moment.strftime("%d.%m.%Y %H:%M:%S.000")
            rows.append(f"{stamp},{price},{price + 0.001},{price - 0.001},{price},{100 + i}")
            hours.append(t)
            i += 1
        t += 3600
    path.write_text("\n".join(rows) + "\n")
    return hours


def test_hourly_fx_with_weekends_missing_makes_no_weekend_candle_and_labels_count_hours(
    tmp_path: Path,
) -> None:
    path = tmp_path / "EURUSD_1h.csv"
    hours = _fx_hours(path)
    profile = candle_profile(path, Reading("dukascopy"))
    assert profile is not None and profile.seconds == 3600 and profile.gap_policy == "skip"
    assert "weeks" in profile.reason  # told by the weekly holes, not their share
    processor = FeatureProcessor(3600, 0, 5, gap_policy=profile.gap_policy)
    candles, examples = [], []
    for trade in replay(path, Reading("dukascopy"), candle_seconds=3600):
        assert isinstance(trade, Trade)
        out = processor.on_trade(trade)
        candles.extend(out.candles)
        examples.extend(out.examples)
    starts = [c.start for c in candles]
    assert set(starts) <= set(hours) and len(starts) >= len(hours) - 1  # none invented
    index = {h: i for i, h in enumerate(hours)}
    assert examples and all(index[e.label_ts - 3600] - index[e.ts - 3600] == 5 for e in examples)
    assert sum(e.target == 0 for e in examples) < len(examples) / 10


def test_the_users_gap_policy_wins_over_the_files_sessions(tmp_path: Path) -> None:
    path = tmp_path / "EURUSD_1h.csv"
    _fx_hours(path)
    reading = Reading("dukascopy")
    plain = Settings(state_dir=tmp_path / "s", candle_seconds=3600)
    with pytest.raises(RtmlError, match=r"--gap-policy skip.*|weeks"):
        check_candle_file(plain, path, reading)
    for policy in ("flat", "skip"):
        chosen = plain.model_copy(update={"gap_policy": policy})
        check_candle_file(chosen, path, reading)  # no error: the user chose
        said: list[str] = []
        demo = Demo(chosen, DemoRun(source=str(path), reading=reading), out=said.append)
        demo.take_symbols(path)
        assert demo.settings.gap_policy == policy and any("chosen by the user" in m for m in said)
    said = []
    guessed = Demo(plain, DemoRun(source=str(path), reading=reading), out=said.append)
    guessed.take_symbols(path)
    assert guessed.settings.gap_policy == "skip" and any("weeks" in m for m in said)


def test_a_market_without_closes_is_flat_whatever_its_few_gaps(tmp_path: Path) -> None:
    path = tmp_path / "BTC.csv"
    stamps = [_T + 60 * i for i in range(3000) if i not in (500, 1700)]  # two missing minutes
    path.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        + "\n".join(f"BTC,{t},1,2,0.5,1.5,1" for t in stamps)
    )
    profile = candle_profile(path)
    assert profile is not None and profile.gap_policy == "flat" and profile.seconds == 60


@pytest.mark.parametrize("name", ["AAPL.CSV.GZ", "AAPL.PARQUET"])
def test_the_demo_splits_a_file_into_canonical_parts_it_reads_back(
    tmp_path: Path, name: str
) -> None:
    rows = [f"AAPL,2024-01-0{d},1,2,0.5,1.{d},10" for d in range(1, 9)]
    text = "symbol,ts,open,high,low,close,volume\n" + "\n".join(rows) + "\n"
    path = tmp_path / name
    if name.endswith(".GZ"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        (tmp_path / "plain.csv").write_text(text)
        pd.read_csv(tmp_path / "plain.csv").to_parquet(path, index=False)
    demo = Demo(
        Settings(state_dir=tmp_path / "state"), DemoRun(source=str(path)), out=lambda _: None
    )
    history, stream = demo.split_replay(path)
    read = [_trades(list(replay(part, candle_seconds=86_400))) for part in (history, stream)]
    assert [len(trades) for trades in read] == [4 * 4, 4 * 4]
    assert max(t.ts for t in read[0]) < min(t.ts for t in read[1])
    assert not math.isnan(read[0][0].ts)
