"""Feast definitions for rtml: the symbol entity, candle features, targets and the model's service.

Offline data are append-only parquet parts in directories that the FileSources read (Feast's
offline push would rewrite one whole file per call). Online features are written through the
push source into Redis.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64

from rtml.pipelines.features.indicators import EXTRA_COLUMNS, FEATURE_NAMES
from rtml.pipelines.features.targets import TARGETS
from rtml.settings import Settings

_settings = Settings()

symbol = Entity(
    name="symbol",
    join_keys=["symbol"],
    value_type=ValueType.STRING,
    description="A traded instrument, e.g. BTC/USD.",
)

candle_features_source = FileSource(
    name="candle_features_offline",
    path=str(_settings.offline_dir / "features"),
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
    path=str(_settings.offline_dir / "targets"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="The label of the candle closing at event_timestamp; created when known.",
)

candle_targets = FeatureView(
    name="candle_targets",
    entities=[symbol],
    ttl=timedelta(hours=1),
    schema=[Field(name=t.column, dtype=Float64) for t in TARGETS.values()],
    source=candle_targets_source,
    online=False,
    description="; ".join(f"{t.column}: {t.description}" for t in TARGETS.values()),
)

price_change_model = FeatureService(
    name="price_change_model",
    features=[candle_features[FEATURE_NAMES]],
    description="What the price-change model reads, in training and in serving.",
)
