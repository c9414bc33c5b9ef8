"""MLflow registry and Feast store on the embedded stack."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from rtml import registry
from rtml.feature_store import (
    FEATURE_SERVICE,
    FEATURES_DATASET,
    PUSH_SOURCE,
    append_parquet,
    historical_features,
    online_features,
    open_store,
)
from rtml.pipelines.features.indicators import EXTRA_COLUMNS, FEATURE_NAMES
from rtml.settings import Settings

pytestmark = pytest.mark.integration


class Scale:
    """A tiny online regressor: the sum of its inputs times a factor."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict_one(self, x: dict[str, float]) -> float:
        return sum(x.values()) * self.factor


def test_mlflow_versions_aliases_and_load(settings: Settings) -> None:
    name = f"test-model-{uuid.uuid4().hex[:8]}"
    versions = [
        registry.log_version(settings, Scale(f), name=name, tags={"factor": str(f)})
        for f in (2.0, 3.0)
    ]
    assert versions == ["1", "2"]
    client = registry.client(settings)
    assert client.get_model_version(name, "2").tags["factor"] == "3.0"

    client.set_registered_model_alias(name, registry.CHAMPION, "1")
    frame = pd.DataFrame({"x": [1.0, 5.0], "y": [float("nan"), 1.0]})
    champion = registry.load(settings, registry.CHAMPION, name=name)
    assert champion.model.predict(None, frame) == [2.0, 12.0]

    client.set_registered_model_alias(name, registry.CHAMPION, "2")
    assert client.get_model_version_by_alias(name, registry.CHAMPION).version == "2"
    assert registry.load(settings, registry.CHAMPION, name=name).model.predict(None, frame) == [
        3.0,
        18.0,
    ]


def test_prune_keeps_the_newest_and_every_aliased_or_recent_champion(
    settings: Settings,
) -> None:
    local = settings.model_copy(update={"model_name": f"prune-{uuid.uuid4().hex[:8]}"})
    versions = [registry.log_version(local, Scale(float(f))) for f in range(8)]
    registry.promote(local, versions[0])
    registry.client(local).set_registered_model_alias(local.model_name, "candidate", versions[1])
    doomed = registry.prune(local, keep=3)
    assert sorted(doomed, key=int) == versions[2:5]
    left = registry.client(local).search_model_versions(f"name='{local.model_name}'")
    assert sorted((v.version for v in left), key=int) == [*versions[:2], *versions[5:]]


def _feature_rows(symbol: str, times: list[datetime], base: float) -> pd.DataFrame:
    rows = []
    for i, ts in enumerate(times):
        row: dict[str, Any] = {"symbol": symbol, "event_timestamp": ts, "created": ts}
        row.update({name: base + i + k / 100 for k, name in enumerate(FEATURE_NAMES)})
        row.update({name: 1.0 for name in EXTRA_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)


def test_feast_online_write_and_read(settings: Settings) -> None:
    store = open_store(settings)
    symbol = f"TEST-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC).replace(microsecond=0)
    frame = _feature_rows(symbol, [now - timedelta(minutes=1), now], base=10.0)
    store.push(PUSH_SOURCE, frame.iloc[[0]])
    store.push(PUSH_SOURCE, frame.iloc[[1]])

    got = online_features(store, [symbol, "UNKNOWN"])
    assert got["symbol"] == [symbol, "UNKNOWN"]
    assert got["ret_1"] == [11.0, None]
    assert got["rsi_14"][0] == pytest.approx(11.07)
    assert set(FEATURE_NAMES) <= set(got)


def test_feast_point_in_time_join_from_parquet_directory(settings: Settings) -> None:
    store = open_store(settings)
    symbol = f"TEST-{uuid.uuid4().hex[:6]}"
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    times = [t0 + timedelta(minutes=m) for m in range(4)]
    directory = settings.offline_dir / FEATURES_DATASET
    append_parquet(directory, _feature_rows(symbol, times[:2], base=100.0))
    append_parquet(directory, _feature_rows(symbol, times[2:], base=102.0))

    entities = pd.DataFrame(
        {
            "symbol": [symbol] * 3,
            "event_timestamp": [
                times[0] + timedelta(seconds=30),  # sees the row at t0
                times[2],  # sees the row at exactly t2
                times[3] - timedelta(seconds=1),  # still t2: t3 is in its future
            ],
        }
    )
    joined = (
        store.get_historical_features(
            entity_df=entities, features=store.get_feature_service(FEATURE_SERVICE)
        )
        .to_df()
        .sort_values("event_timestamp")
    )
    assert list(joined["ret_1"]) == [100.0, 102.0, 102.0]


def test_historical_features_match_feasts_point_in_time_join(settings: Settings) -> None:
    """rtml's linear join gives what Feast's own `get_historical_features` gives."""
    store = open_store(settings)
    symbols = [f"PIT{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    times = [t0 + timedelta(minutes=m) for m in range(20)]
    late = t0 + timedelta(hours=3)
    directory = settings.offline_dir / FEATURES_DATASET
    for i, symbol in enumerate(symbols):
        append_parquet(directory, _feature_rows(symbol, times, base=10.0 * (i + 1)))
        # a gap of hours, then one more row
        append_parquet(directory, _feature_rows(symbol, [late], base=-5.0))

    probes = [
        t0 - timedelta(minutes=1),  # before any row: nothing
        times[5],  # exactly a row's time (written twice)
        times[7] + timedelta(seconds=30),  # between rows: the row at t7
        times[19] + timedelta(minutes=59),  # within the one-hour ttl of t19
        times[19] + timedelta(minutes=61),  # beyond it: nothing
        late,
    ]
    entities = pd.DataFrame(
        {
            "symbol": [s for s in symbols for _ in probes],
            "event_timestamp": [t for _ in symbols for t in probes],
            "target": [float(i) for i in range(len(symbols) * len(probes))],
        }
    )
    service = store.get_feature_service(FEATURE_SERVICE)
    theirs = store.get_historical_features(entity_df=entities, features=service).to_df()
    ours, names = historical_features(store, entities, service)
    assert sorted(names) == sorted(FEATURE_NAMES)

    def canonical(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.assign(event_timestamp=pd.to_datetime(frame["event_timestamp"], utc=True))
        columns = ["symbol", "event_timestamp", "target", *FEATURE_NAMES]
        return frame[columns].sort_values(["symbol", "event_timestamp"], ignore_index=True)

    pd.testing.assert_frame_equal(canonical(ours), canonical(theirs), check_dtype=False)
    first = canonical(ours)[lambda f: f["symbol"] == symbols[0]]
    # before any row and beyond the ttl there is no feature row: those probes are left out
    assert first["event_timestamp"].tolist() == [probes[i] for i in (1, 2, 3, 5)]
    assert first["ret_1"].iloc[1] == 10.0 + 7  # between rows: the row at t7

    # the row at t5 written again later: the newest `created` wins, as Feast documents (its
    # file store's own join picked either row from one run to the next)
    again = _feature_rows(symbols[0], [times[5]], base=77.0)
    again["created"] = times[5] + timedelta(hours=2)
    append_parquet(directory, again)
    rewritten, _ = historical_features(store, entities, service)
    at_t5 = rewritten[
        (rewritten["symbol"] == symbols[0]) & (rewritten["event_timestamp"] == times[5])
    ]
    assert at_t5["ret_1"].tolist() == [77.0]
