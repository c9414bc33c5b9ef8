"""The one wrapper around Feast: open the store from settings, write online, append offline.

Offline rows are written as append-only parquet parts (a temporary file, then an atomic rename)
into the directories that feature_repo's FileSources read: Feast's own offline push rewrites
the whole file on every call, so its cost grows with history.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rtml.errors import ConfigError
from rtml.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

FEATURE_VIEW = "candle_features"
PUSH_SOURCE = "candle_features_push"
FEATURE_SERVICE = "price_change_model"
FEATURES_DATASET = "features"
TARGETS_DATASET = "targets"
CANDLES_DATASET = "candles"
"""Every closed candle, warm-up ones too: what the feature pipeline resumes a symbol from."""
OFFLINE_DATASETS = (FEATURES_DATASET, TARGETS_DATASET, CANDLES_DATASET)


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on the registry and online store named by `settings`."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    if not settings.feast_registry_path.exists():
        raise ConfigError(
            f"no Feast registry at {settings.feast_registry_path}. "
            "Run `rtml up` (or `rtml feast-apply`) to apply feature_repo/ first."
        )
    config = RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=str(settings.feast_registry_path),
        online_store={"type": "redis", "connection_string": settings.feast_redis_connection},
        offline_store={"type": settings.offline_store},
        entity_key_serialization_version=3,
        repo_path=settings.feature_repo,
    )
    store = FeatureStore(config=config)
    _single_attempt(store)
    return store


def _single_attempt(store: FeatureStore) -> None:
    """One attempt per Redis call, bounded by the connection string's timeouts.

    redis-py retries a failed call 3 times with exponential backoff (3 to 9 s in all), and
    Feast builds its client from a connection string that cannot say otherwise. rtml's loops
    retry on their own (the feature sink with backoff), and a prediction request must fail
    within the timeout, so the client makes one attempt.
    """
    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        online = store._get_provider().online_store
        if isinstance(online, RedisOnlineStore):
            online._get_client(store.config.online_store).set_retry(Retry(NoBackoff(), 0))
    except AttributeError as exc:  # another Feast's internals: keep its client as it is
        log.warning("could not bound the Redis client's retries: %s", exc)


def append_parquet(directory: Path, frame: pd.DataFrame) -> Path | None:
    """Write `frame` as a new part in `directory`, visible to readers only once complete."""
    if frame.empty:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    name = f"part-{pd.Timestamp.now(tz='UTC').strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
    tmp = directory / f".{name}.tmp"
    final = directory / f"{name}.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    tmp.replace(final)
    return final


def read_parquet_dir(
    directory: Path,
    columns: list[str] | None = None,
    since: pd.Timestamp | None = None,
    symbols: list[str] | None = None,
) -> pd.DataFrame:
    """Every complete part in `directory` as one frame (empty when there are none); with
    `since`, only rows whose event_timestamp is at or after it (older parts are skipped on
    their statistics, not read); with `symbols`, only their rows (a shard's)."""
    parts = sorted(directory.glob("*.parquet")) if directory.exists() else []
    if not parts:
        return pd.DataFrame(columns=columns)
    filters: list[tuple[str, str, Any]] = []
    if since is not None:
        filters.append(("event_timestamp", ">=", since))
    if symbols is not None:
        filters.append(("symbol", "in", symbols))
    return pd.concat(
        [pd.read_parquet(p, columns=columns, filters=filters or None) for p in parts],
        ignore_index=True,
    )


def compact(directory: Path) -> tuple[int, int]:
    """Merge the parts in `directory` into one: each (symbol, event time) once, its newest
    `created` kept (what a point-in-time read would pick). Returns how many parts it read and
    how many rows it wrote (-1 when there were fewer than two parts to merge).

    The new part is complete before the parts it replaces are removed, and parts written
    meanwhile (a running pipeline) are left alone, so readers never miss a row.
    """
    parts = sorted(directory.glob("*.parquet")) if directory.exists() else []
    if len(parts) < 2:
        return len(parts), -1
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    order = ["symbol", "event_timestamp", "created"] if "created" in frame else None
    frame = (
        frame.sort_values(order or ["symbol", "event_timestamp"], kind="stable")
        .drop_duplicates(["symbol", "event_timestamp"], keep="last")
        .sort_values(["event_timestamp", "symbol"], kind="stable")
    )
    append_parquet(directory, frame)
    for part in parts:
        part.unlink()
    return len(parts), len(frame)


def stored_keys(directory: Path) -> set[tuple[str, float]]:
    """Every (symbol, event time in epoch seconds) the parts in `directory` hold."""
    frame = read_parquet_dir(directory, columns=["symbol", "event_timestamp"])
    if frame.empty:
        return set()
    seconds = (frame["event_timestamp"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return set(zip(frame["symbol"].astype(str), seconds.astype(float), strict=True))


def history_end(settings: Settings) -> tuple[float | None, dict[str, float] | None]:
    """Where the offline store ends: the next candle's start and each symbol's last close."""
    frame = read_parquet_dir(
        settings.offline_dir / FEATURES_DATASET, columns=["symbol", "event_timestamp", "close"]
    )
    if not frame.empty:
        frame = frame[frame["symbol"].isin(settings.symbols)]
    if frame.empty:
        return None, None
    last = frame.sort_values("event_timestamp").groupby("symbol").tail(1)
    start = float(last["event_timestamp"].max().timestamp())  # features are stamped at the close
    return start, {str(s): float(c) for s, c in zip(last["symbol"], last["close"], strict=True)}


SERVICE_TTL_S = 60.0
"""How long a resolved feature service is used before the registry is asked again."""

_services: weakref.WeakKeyDictionary[FeatureStore, tuple[float, Any]] = weakref.WeakKeyDictionary()


def feature_service(store: FeatureStore) -> Any:
    """The model's feature service, resolved at most once a minute per store.

    Feast builds it from the registry's protos on every `get_feature_service`, cache or not,
    which costs more than the Redis read it drives. It changes only with `feast apply`: a
    reader sees the change within `SERVICE_TTL_S` of its store's registry cache seeing it.
    """
    now = time.monotonic()
    cached = _services.get(store)
    if cached is None or now - cached[0] > SERVICE_TTL_S:
        service = store.get_feature_service(FEATURE_SERVICE, allow_cache=True)
        cached = _services[store] = (now, service)
    return cached[1]


def historical_features(
    store: FeatureStore, entities: pd.DataFrame, service: Any | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """`entities` (`symbol`, `event_timestamp`, any other columns) with the feature service's
    features as of each row's event time; returns the frame (in event-time order) and the
    feature names.

    Feast's point-in-time semantics: the newest feature row at or before the event time and
    within its view's ttl, the newest `created` among rows of one event time; an entity row
    with none is left out, as Feast's file store leaves it out. Each view's rows in the
    entities' time span are read once through Feast's offline store
    (`pull_all_from_table_or_query`, which every offline store implements) and joined as of
    each event time, so time and memory grow linearly with the history. The
    `file` store's own `get_historical_features` merges every entity row with every feature
    row of its key first: quadratic, out of memory after a few days of minute candles.
    """
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    service = service if service is not None else feature_service(store)
    offline = get_offline_store_from_config(store.config.offline_store)
    out = entities.assign(
        event_timestamp=pd.to_datetime(entities["event_timestamp"], utc=True).astype(
            "datetime64[ns, UTC]"
        )
    ).sort_values("event_timestamp", kind="stable", ignore_index=True)
    if store.config.offline_store.type != "file":
        return _joined_by_the_store(store, service, out)
    first, last = out["event_timestamp"].min(), out["event_timestamp"].max()
    names: list[str] = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        source = view.batch_source
        if source is None:
            raise ConfigError(f"feature view {view.name} has no batch source to read history")
        columns = [f.name for f in projection.features]
        ttl = pd.Timedelta(view.ttl) if view.ttl else None
        created = source.created_timestamp_column or None
        start = first - ttl if ttl is not None else first - pd.Timedelta(days=36500)
        wanted = [*columns, *([created] if created else [])]
        rows = _parquet_rows(store, source, wanted, start, last, out["symbol"].unique())
        if rows is None:
            rows = offline.pull_all_from_table_or_query(
                config=store.config,
                data_source=source,
                join_key_columns=["symbol"],
                # `created` is read as a column, not handed over as the created-timestamp
                # column: the file store would sort the whole source by it before filtering
                feature_name_columns=wanted,
                timestamp_field=source.timestamp_field,
                start_date=start,
                end_date=last,
            ).to_df()
        stamp = source.timestamp_field
        order = [stamp, created] if created else [stamp]
        rows = (
            rows.assign(
                **{stamp: pd.to_datetime(rows[stamp], utc=True).astype("datetime64[ns, UTC]")}
            )
            .sort_values(order, kind="stable")
            .drop_duplicates(["symbol", stamp], keep="last")
            .rename(columns={stamp: "_feature_ts"})[["symbol", "_feature_ts", *columns]]
        )
        out = pd.merge_asof(
            out,
            rows,
            left_on="event_timestamp",
            right_on="_feature_ts",
            by="symbol",
            direction="backward",
            tolerance=ttl,
        ).drop(columns=["_feature_ts"])
        # as Feast's file store does: a row with no feature row in its ttl is left out
        out = out.dropna(subset=columns, how="all").reset_index(drop=True)
        names.extend(columns)
    return out, names


def _joined_by_the_store(
    store: FeatureStore, service: Any, entities: pd.DataFrame
) -> tuple[pd.DataFrame, list[str]]:
    """Feast's own point-in-time join, where the offline store runs it (DuckDB over the same
    parquet parts, a warehouse): rows with no feature in their ttl are left out, as above."""
    names = [f.name for projection in service.feature_view_projections for f in projection.features]
    joined = store.get_historical_features(entity_df=entities, features=service).to_df()
    joined = joined.assign(
        event_timestamp=pd.to_datetime(joined["event_timestamp"], utc=True).astype(
            "datetime64[ns, UTC]"
        )
    )
    joined = joined.dropna(subset=names, how="all")
    return joined.sort_values("event_timestamp", kind="stable", ignore_index=True), names


def _parquet_rows(
    store: FeatureStore,
    source: Any,
    columns: list[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    symbols: Any,
) -> pd.DataFrame | None:
    """For the `file` offline store over a directory of parquet parts (rtml's own layout):
    the rows of `symbols` in [start, end], read with the parts' statistics (parts outside
    the span are skipped, other symbols' rows never built). None for any other store: Feast's
    `pull_all_from_table_or_query` reads those where they are."""
    from feast.infra.offline_stores.file_source import FileSource

    if store.config.offline_store.type != "file" or not isinstance(source, FileSource):
        return None
    path, stamp = Path(source.path), source.timestamp_field
    if not path.is_dir() or stamp != "event_timestamp":
        return None
    frame = read_parquet_dir(
        path, columns=["symbol", stamp, *columns], since=start, symbols=list(symbols)
    )
    if frame.empty:
        return frame
    return frame[pd.to_datetime(frame[stamp], utc=True) <= end]


def online_features(
    store: FeatureStore,
    symbols: list[str],
    features: Any | None = None,
    with_timestamps: bool = False,
) -> dict[str, list[Any]]:
    """Online features (by default the model's feature service) for `symbols`, as column lists.

    With `with_timestamps`, each feature `f` has a column `f__ts` of epoch seconds.
    """
    wanted = features if features is not None else feature_service(store)
    response = store.get_online_features(
        features=wanted, entity_rows=[{"symbol": s} for s in symbols]
    )
    result: dict[str, list[Any]] = response.to_dict(include_event_timestamps=with_timestamps)
    return result


def redis_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable online store raises: worth a retry or a 503, not a crash."""
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError)
