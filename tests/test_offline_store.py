"""The offline store's parquet parts, without services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from rtml import feature_store as fs
from rtml.pipelines.features.feed import backfill
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.pipelines.training.dataset import offline_examples
from rtml.settings import Settings


def _rows(symbol: str, minutes: range, value: float, created: datetime) -> pd.DataFrame:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    return pd.DataFrame(
        {
            "symbol": symbol,
            "event_timestamp": [t0 + timedelta(minutes=m) for m in minutes],
            "created": created,
            "ret_1": value,
        }
    )


def test_compact_merges_parts_keeping_each_key_once_with_its_newest_row(tmp_path: Path) -> None:
    directory = tmp_path / "features"
    early, late = datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC)
    fs.append_parquet(directory, _rows("A", range(0, 10), 1.0, early))
    fs.append_parquet(directory, _rows("A", range(5, 15), 2.0, late))  # rewrites 5..9
    fs.append_parquet(directory, _rows("B", range(0, 3), 3.0, early))
    assert fs.compact(directory) == (3, 15 + 3)
    assert len(list(directory.glob("*.parquet"))) == 1
    merged = fs.read_parquet_dir(directory)
    assert not merged.duplicated(["symbol", "event_timestamp"]).any()
    a = merged[merged["symbol"] == "A"].set_index("event_timestamp")["ret_1"]
    assert a.iloc[:5].eq(1.0).all() and a.iloc[5:].eq(2.0).all()  # the newest created won
    assert fs.compact(directory) == (1, -1)  # nothing left to merge


def test_a_quiet_symbol_resumes_from_around_its_newest_candle_without_a_full_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A halted pair's newest candles are days old: the pipeline resumes it from them, read
    around the newest candle the commit records name, not by reading the whole store. A
    symbol the records do not name has no candles, and is not looked for."""
    from rtml.pipelines.features.indicators import HISTORY, Candle
    from rtml.pipelines.features.resume import History
    from rtml.pipelines.features.sink import candles_frame
    from rtml.settings import Settings

    settings = Settings(state_dir=tmp_path, symbols=("LIVE", "HALTED", "NEW"), horizon=3)
    directory = settings.offline_dir / fs.CANDLES_DATASET
    now = pd.Timestamp.now(tz="UTC").floor("min").timestamp()
    halted_at = now - 5 * 86_400

    def candles(symbol: str, end: float, n: int) -> list[Candle]:
        ends = [end - 60 * (n - 1 - i) for i in range(n)]
        return [Candle(symbol, t - 60, t, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1) for t in ends]

    for day in range(10, 0, -1):  # ten days of parts of the live symbol: the history
        fs.append_parquet(directory, candles_frame(candles("LIVE", now - day * 86_400, 100)))
    fs.append_parquet(directory, candles_frame(candles("HALTED", halted_at, 200)))
    fs.append_parquet(directory, candles_frame(candles("LIVE", now, 200)))
    reads: list[tuple[object, object]] = []
    original = fs.read_parquet_dir

    def counted(path: Path, *args: object, **kwargs: object) -> pd.DataFrame:
        reads.append((kwargs.get("since"), kwargs.get("symbols")))
        return original(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fs, "read_parquet_dir", counted)
    wanted = HISTORY + 3
    index = {"LIVE": now, "HALTED": halted_at}
    history = History.read(settings, 3, newest=index)
    assert [c.end for c in history.candles["HALTED"]][-1] == halted_at
    assert len(history.candles["HALTED"]) == len(history.candles["LIVE"]) == wanted
    assert "NEW" not in history.candles
    assert reads[1][1] == ["HALTED", "NEW"]  # NEW is looked for back from now, alone
    assert all(symbols == ["NEW"] for since, symbols in reads if since is None), reads
    reads.clear()
    # without the records' index: the lacking symbols' whole history, theirs only
    History.read(settings, 3)
    assert all(symbols is not None for _, symbols in reads), reads
    assert (None, ["NEW"]) in reads  # the halted pair was found in a window before


@pytest.mark.integration
def test_the_warm_start_reads_the_same_examples_through_feasts_duckdb_store(
    stack_settings: Settings,
) -> None:
    """The same parquet parts, joined point-in-time two ways: read and joined in this process
    (the `file` store's path), and by Feast's `get_historical_features` on its DuckDB offline
    store, as a warehouse's store would where the data is."""
    tag = uuid.uuid4().hex[:6]
    local = stack_settings.model_copy(update={"symbols": (f"D{tag}/USD", f"E{tag}/USD")})
    market = SyntheticMarket(local.symbols, seed=3, start_ts=1_700_000_040.0)
    backfill(local, list(market.candles_of_trades(300)), write_online=False)
    by_file = offline_examples(local)
    ducked = local.model_copy(update={"offline_store": "duckdb"})
    assert fs.open_store(ducked).config.offline_store.type == "duckdb"
    by_duckdb = offline_examples(ducked)
    assert len(by_file) > 400  # two symbols, 300 candles each, less warm-up and horizon
    assert by_duckdb == by_file
