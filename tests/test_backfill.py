"""`backfill`: synthetic history into the offline store with the live pipeline's code."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest

from rtml import feature_store as fs
from rtml.pipelines.features.feed import backfill
from rtml.pipelines.features.indicators import FEATURE_NAMES, WARMUP
from rtml.pipelines.features.processor import FeatureProcessor, Outputs
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.settings import Settings

pytestmark = pytest.mark.integration


def test_backfill_writes_offline_history_and_latest_online(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(update={"symbols": (f"A{tag}", f"B{tag}")})
    candles = 60

    def market() -> SyntheticMarket:
        return SyntheticMarket(local.symbols, seed=4, start_ts=1_700_000_040)

    stats = backfill(local, market().candles_of_trades(candles), part_rows=50)
    assert stats.rejected == {}
    # the run ends at the end of its input, so every candle closes
    assert stats.features == 2 * (candles - WARMUP + 1)
    assert stats.examples == 2 * (candles - WARMUP + 1 - local.horizon)

    offline = fs.read_parquet_dir(local.offline_dir / fs.FEATURES_DATASET)
    mine = offline[offline["symbol"].isin(local.symbols)]
    assert len(mine) == stats.features
    targets = fs.read_parquet_dir(local.offline_dir / fs.TARGETS_DATASET)
    assert len(targets[targets["symbol"].isin(local.symbols)]) == stats.examples

    # the same trades through the processor directly give the same rows
    direct = Outputs()
    processor = FeatureProcessor(local.candle_seconds, local.allowed_lateness_s, local.horizon)
    for trade in market().candles_of_trades(candles):
        direct.extend(processor.on_trade(trade))
    direct.extend(processor.flush(float("inf")))
    last = {r.symbol: r for r in direct.features}
    online = fs.online_features(fs.open_store(local), list(local.symbols))
    for i, symbol in enumerate(local.symbols):
        assert {n: online[n][i] for n in FEATURE_NAMES} == {
            n: last[symbol].values[n] for n in FEATURE_NAMES
        }
    stamps = mine[mine["symbol"] == local.symbols[0]]["event_timestamp"]
    diffs = stamps.sort_values().diff().dropna()
    assert len(diffs) == candles - WARMUP and (diffs == pd.Timedelta(seconds=60)).all()


def test_backfill_twice_over_the_same_span_writes_each_row_once(settings: Settings) -> None:
    local = settings.model_copy(update={"symbols": (f"D{uuid.uuid4().hex[:6]}",)})

    def run() -> int:
        market = SyntheticMarket(local.symbols, seed=7, start_ts=1_700_000_040)
        return backfill(local, market.candles_of_trades(80), write_online=False).already_stored

    assert run() == 0
    first = {name: fs.read_parquet_dir(local.offline_dir / name) for name in fs.OFFLINE_DATASETS}
    assert run() > 0  # everything it built was there already
    for name in fs.OFFLINE_DATASETS:
        frame = fs.read_parquet_dir(local.offline_dir / name)
        mine = frame[frame["symbol"].isin(local.symbols)]
        assert not mine.duplicated(["symbol", "event_timestamp"]).any(), name
        before = first[name][first[name]["symbol"].isin(local.symbols)]
        assert len(mine) == len(before) > 0, name


def test_a_file_of_bad_rows_is_counted_and_logged_a_few_at_a_time(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Each skipped record was a warning of its own: a file of a million bad rows, a million
    lines. The first few of each class are logged, and every one is counted."""
    from rtml.pipelines.features.feed import LOGGED_PER_CLASS
    from rtml.records import BadRecord

    local = settings.model_copy(update={"symbols": (f"C{uuid.uuid4().hex[:6]}",)})
    bad = [BadRecord("wrong_type", f"row {i}: ts is not a time") for i in range(500)]
    bad += [BadRecord("not_finite", f"row {i}: price is NaN") for i in range(3)]
    with caplog.at_level("WARNING", logger="rtml.pipelines.features.feed"):
        stats = backfill(local, bad, write_online=False)
    assert stats.rejected == {"wrong_type": 500, "not_finite": 3}
    lines = [r.getMessage() for r in caplog.records if "backfill skipped" in r.getMessage()]
    assert len(lines) == LOGGED_PER_CLASS + 3
    assert "counted, not logged" in lines[LOGGED_PER_CLASS - 1]


def test_only_configured_symbols_are_built_and_none_configured_says_what_to_set(
    settings: Settings,
) -> None:
    """As in the live pipeline, a trade of a symbol that is not configured is `unknown_symbol`
    (a file of a million symbols held a million windows open); where none is configured,
    the error names the symbols the input holds and what to set."""
    from rtml.errors import ConfigError
    from rtml.pipelines.features.feed import NAMED_UNKNOWN

    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(update={"symbols": (f"K{tag}",)})
    mixed = SyntheticMarket((f"K{tag}", f"U{tag}"), seed=2, start_ts=1_700_000_040)
    trades = list(mixed.candles_of_trades(30))
    stats = backfill(local, trades, write_online=False)
    theirs = sum(t.symbol == f"U{tag}" for t in trades)
    assert stats.rejected == {"unknown_symbol": theirs} and stats.trades == len(trades) - theirs
    stored = fs.stored_keys(local.offline_dir / fs.FEATURES_DATASET)
    symbols = {symbol for symbol, _ in stored}
    assert f"K{tag}" in symbols and f"U{tag}" not in symbols

    many = [SyntheticMarket((f"Z{i}{tag}",), seed=i, start_ts=1_700_000_040) for i in range(9)]
    others = [t for market in many for t in market.candles_of_trades(2)]
    with pytest.raises(ConfigError) as refused:
        backfill(local, others, write_online=False)
    message = str(refused.value)
    named = [f"Z{i}{tag}" for i in range(NAMED_UNKNOWN)]
    assert f"RTML_SYMBOLS={','.join(named)}" in message and f"Z8{tag}" not in message, message


def test_a_folder_of_daily_candle_files_backfills_every_candle_once(
    settings: Settings, tmp_path: Path
) -> None:
    """History a file a day and a symbol (as Binance's dumps come): each day's candles were
    named like the day before's (`c0-0`), so after the first file of a symbol every candle of
    the next was dropped as seen before. A folder of them is one market: every candle of
    every day is built, once."""
    from rtml.pipelines.market.files import Reading
    from rtml.pipelines.market.folders import replay_folder

    tag = uuid.uuid4().hex[:6].upper()
    local = settings.model_copy(update={"symbols": (f"A{tag}", f"B{tag}")})
    folder = tmp_path / "history"
    folder.mkdir()
    days, per_day = 3, 120
    for symbol in local.symbols:
        for day in range(days):
            start = 1_700_006_400 + 86_400 * day
            rows = [
                f"{(start + 60 * m) * 1000},{100 + m % 7},{101 + m % 7},{99 + m % 7},"
                f"{100.5 + m % 7},2,{(start + 60 * m + 59) * 1000 + 999},1,1,1,1,0"
                for m in range(per_day)
            ]
            (folder / f"{symbol}-1m-2023-11-{15 + day}.csv").write_text("\n".join(rows) + "\n")
    stats = backfill(
        local,
        replay_folder(folder, Reading("binance-klines"), local.candle_seconds),
        write_online=False,
    )
    assert stats.rejected == {}
    assert stats.trades == 2 * days * per_day * 4
    offline = fs.read_parquet_dir(local.offline_dir / fs.FEATURES_DATASET)
    mine = offline[offline["symbol"].isin(local.symbols)]
    assert not mine.duplicated(["symbol", "event_timestamp"]).any()
    # each symbol's candles of every day, less the warm-up
    assert len(mine) == stats.features
    for symbol in local.symbols:
        stamps = mine[mine["symbol"] == symbol]["event_timestamp"]
        days_built = {t.day for t in stamps}
        assert days_built == {15, 16, 17}, days_built
