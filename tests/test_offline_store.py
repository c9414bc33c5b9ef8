"""The offline store's parquet parts, without services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from rtml import feature_store as fs


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
