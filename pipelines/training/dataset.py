"""The training set in the offline store: labels joined point-in-time to their features.

The history is read in time-ordered chunks (`example_chunks`): a warm start streams it
through the learner, so its memory is bounded by a chunk and the feature view's ttl, not by
the history. Each chunk's labels are joined as of their event time to the feature rows
(`rtml.feature_store.historical_features`), which reads only the rows of the chunk's span.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from tqdm import tqdm

from rtml import feature_store as fs
from rtml.errors import ConfigError
from rtml.records import Example
from rtml.settings import Settings

from ..features.targets import target
from .learner import Learner

log = logging.getLogger(__name__)

CHUNK_ROWS = 25_000
"""Labels per chunk of a streamed history: some 50 MB of examples at most."""


def labels(settings: Settings, after: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The offline store's labels of this trainer's symbols (its shard), in event-time order;
    `after` keeps, per symbol, only those past the given event time."""
    column = target(settings.target).column
    directory = settings.offline_dir / fs.TARGETS_DATASET
    targets = fs.read_parquet_dir(directory, symbols=list(settings.symbols))
    if targets.empty:
        return targets
    if column not in targets:
        raise ConfigError(
            f"the offline store in {settings.offline_dir} holds no {settings.target} labels "
            f"({column}); backfill it with `rtml backfill --target {settings.target}`, or "
            "train the target it holds"
        )
    targets = targets[targets[column].notna()]
    if after and not targets.empty:
        since = targets["symbol"].map(after).fillna(-math.inf).astype(float)
        stamps = (targets["event_timestamp"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        targets = targets[stamps > since]
    targets = targets.drop_duplicates(["symbol", "event_timestamp"])
    return targets.sort_values("event_timestamp", kind="stable", ignore_index=True)[
        ["symbol", "event_timestamp", column, "created"]
    ]


def example_chunks(
    settings: Settings,
    after: Mapping[str, float] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    frame: pd.DataFrame | None = None,
) -> Iterator[list[Example]]:
    """The offline store's examples in event-time order, `chunk_rows` labels at a time."""
    column = target(settings.target).column
    targets = labels(settings, after) if frame is None else frame
    if targets.empty:
        return
    store = fs.open_store(settings)
    for begin in range(0, len(targets), chunk_rows):
        part = targets.iloc[begin : begin + chunk_rows]
        joined, names = fs.historical_features(
            store,
            # `created` would clash with the feature sources' own created-timestamp column
            part.rename(columns={"created": "label_time"}),
        )
        joined = joined.sort_values(["event_timestamp", "symbol"], kind="stable")
        rows = joined[["symbol", "event_timestamp", "label_time", column, *names]]
        yield [
            Example(
                str(r["symbol"]),
                r["event_timestamp"].timestamp(),
                r["label_time"].timestamp(),
                {n: float(r[n]) for n in names if r[n] is not None and math.isfinite(r[n])},
                float(r[column]),
            )
            for r in rows.to_dict("records")
        ]


def offline_examples(settings: Settings, after: Mapping[str, float] | None = None) -> list[Example]:
    """Every example of the offline store, in time order (for what needs them all at once:
    catching up after a broker restart, an evaluation)."""
    return [ex for chunk in example_chunks(settings, after) for ex in chunk]


def fit(
    learner: Learner,
    examples: list[Example] | Callable[[], Iterable[list[Example]]],
    epochs: int,
    progress: bool = True,
    total: int | None = None,
) -> None:
    """The first pass predicts before learning (progressive metrics); further passes only
    learn. `examples` is a list, or a function giving the chunks again for each pass."""
    for epoch in range(epochs):
        chunks = [examples] if isinstance(examples, list) else examples()
        size = len(examples) if isinstance(examples, list) else total
        with tqdm(total=size, desc=f"warm start {epoch + 1}/{epochs}", disable=not progress) as bar:
            for chunk in chunks:
                for ex in chunk:
                    if epoch == 0:
                        learner.step(ex)
                    else:
                        learner.learn_one(ex.features, ex.target)
                bar.update(len(chunk))
    if epochs > 1:
        learner.snapshot()  # what serving starts from is the model after every pass


@dataclass(frozen=True, slots=True)
class Dataset:
    """What a fit read from the offline store: how many examples, and their time span."""

    examples: int
    start: float = math.nan  # event time of the first example's features
    end: float = math.nan  # label time of the last one

    def params(self) -> dict[str, str]:
        def iso(ts: float) -> str:
            return datetime.fromtimestamp(ts, UTC).isoformat() if math.isfinite(ts) else ""

        return {
            "dataset.feature_service": fs.FEATURE_SERVICE,
            "dataset.examples": str(self.examples),
            "dataset.from": iso(self.start),
            "dataset.to": iso(self.end),
        }


@dataclass
class _Span:
    """What the first pass over a history saw."""

    examples: int = 0
    start: float = math.inf
    end: float = -math.inf
    passes: int = 0

    def take(self, chunk: list[Example]) -> None:
        if self.passes == 1 and chunk:
            self.examples += len(chunk)
            self.start = min(self.start, chunk[0].ts)
            self.end = max(self.end, *(ex.label_ts for ex in chunk))


def warm_start(settings: Settings, learner: Learner) -> Dataset:
    """Fit on the offline store, `warm_start_epochs` passes, streaming the history in chunks;
    says what it read."""
    frame = labels(settings)
    if frame.empty:
        log.warning("the offline store has no targets yet: starting from an untrained model")
        return Dataset(0)
    log.info("warm start on %d labels, joined point-in-time in chunks", len(frame))
    span = _Span()

    def chunks() -> Iterator[list[Example]]:
        span.passes += 1
        for chunk in example_chunks(settings, frame=frame):
            span.take(chunk)
            yield chunk

    fit(learner, chunks, settings.warm_start_epochs, total=len(frame))
    if not span.examples:
        return Dataset(0)
    return Dataset(span.examples, span.start, span.end)
