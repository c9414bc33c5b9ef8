"""Feast definitions for rtml: the symbol entity, candle features, targets and the model's service.

Offline data are append-only parquet parts in directories that the FileSources read (Feast's
offline push would rewrite one whole file per call). Online features are written through the
push source into Redis.

This repo imports nothing of rtml: plain `feast apply` works here. The offline data live under
RTML_STATE_DIR (rtml sets it when it applies the repo), by default the repository's `.rtml`
beside this folder. The names are declared here; a test holds them equal to rtml's.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64

FEATURE_NAMES = [
    "ret_1", "ret_5", "ret_15", "vol_15", "range_pct", "volume_z", "vwap_dist", "rsi_14",
    "rv_h", "log_rv_h", "log_rv_4h", "log_rv_20h",
]  # fmt: skip
"""What a model reads (rtml.pipelines.features.indicators.FEATURE_NAMES)."""
EXTRA_COLUMNS = ["close", "volume"]
"""Stored beside them, for the dashboard and the labels."""
TARGETS = {
    "target_return": "the simple return from the candle's close to the close H candles later",
    "target_volatility": "the realised volatility of the next H candles (log returns)",
}
"""Each target's column and what it is (rtml.pipelines.features.targets.TARGETS)."""

STATE_DIR = Path(
    os.environ.get("RTML_STATE_DIR") or Path(__file__).resolve().parent.parent / ".rtml"
)
OFFLINE_DIR = STATE_DIR.resolve() / "offline"

symbol = Entity(
    name="symbol",
    join_keys=["symbol"],
    value_type=ValueType.STRING,
    description="A traded instrument, e.g. BTC/USD.",
)

candle_features_source = FileSource(
    name="candle_features_offline",
    path=str(OFFLINE_DIR / "features"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Features of each closed candle; event_timestamp is the candle's close time.",
)

candle_features_push = PushSource(
    name="candle_features_push",
    batch_source=candle_features_source,
)

candle_features = FeatureView(
    name="candle_features",
    entities=[symbol],
    ttl=timedelta(hours=1),
    schema=[Field(name=name, dtype=Float64) for name in FEATURE_NAMES + EXTRA_COLUMNS],
    source=candle_features_push,
    online=True,
    description="Returns, volatility, range, volume z-score, VWAP distance and RSI per candle.",
)

candle_targets_source = FileSource(
    name="candle_targets_offline",
    path=str(OFFLINE_DIR / "targets"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="The label of the candle closing at event_timestamp; created when known.",
)

candle_targets = FeatureView(
    name="candle_targets",
    entities=[symbol],
    ttl=timedelta(hours=1),
    schema=[Field(name=column, dtype=Float64) for column in TARGETS],
    source=candle_targets_source,
    online=False,
    description="; ".join(f"{column}: {what}" for column, what in TARGETS.items()),
)

price_change_model = FeatureService(
    name="price_change_model",
    features=[candle_features[FEATURE_NAMES]],
    description="What the price-change model reads, in training and in serving.",
)
