"""The feature step alone, the feature pipeline through Kafka, and appends to the offline store."""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from bench.figure import Figure
from bench.measure import best_of, interleaved
from rtml import feature_store as fs
from rtml.kafka import Topics, encode, ensure_topics, make_consumer, make_producer
from rtml.pipelines.features.feature_pipeline import FeaturePipeline
from rtml.pipelines.features.feed import publish
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.features.sink import features_frame
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.records import parse_trade
from rtml.settings import Settings


def bench_processor(n_candles: int) -> Figure:
    trades = list(SyntheticMarket(["A", "B", "C"], seed=1, start_ts=0).candles_of_trades(n_candles))
    raw = [encode(t.to_json()) for t in trades]

    def decode_only() -> float:
        began = time.perf_counter()
        for r in raw:
            parse_trade(r)
        return time.perf_counter() - began

    def pipeline() -> float:
        processor = FeatureProcessor(60, 0, 5)
        began = time.perf_counter()
        for r in raw:
            processor.on_trade(parse_trade(r))
        return time.perf_counter() - began

    ref = len(raw) / best_of(3, decode_only)
    value = len(raw) / best_of(3, pipeline)
    return Figure(
        "feature step (parse, candles, features, labels)",
        value,
        "trades/s",
        "parse only",
        ref,
        value / ref,
        "ratio is the cost of the feature logic",
    )


def bench_kafka_pipeline(settings: Settings, n_candles: int, runs: int = 3) -> Figure:
    """The feature pipeline through Kafka against a bare consumer that decodes JSON, the best
    of `runs` of each, in turn (`interleaved`). Each round publishes the same market under
    symbols and topics of its own: a pipeline resumes symbols from the offline store, and
    would otherwise find the last round's candles there."""
    rounds = 0
    local = settings
    trades: list[Any] = []

    def bare() -> float:
        """A new round: its trades published, then read by a consumer that decodes them."""
        nonlocal rounds, local, trades
        rounds += 1
        tag = f"{uuid.uuid4().hex[:6]}r{rounds}"
        local = settings.model_copy(
            update={"topic_prefix": f"bench{tag}.", "symbols": (f"A{tag}", f"B{tag}", f"C{tag}")}
        )
        topics = Topics.of(local)
        ensure_topics(local, topics.with_dlqs())
        market = SyntheticMarket(local.symbols, seed=2, start_ts=1_700_000_000)
        trades = list(market.candles_of_trades(n_candles))
        publish(make_producer(local), topics.trades, trades)
        consumer = make_consumer(local, f"bare-{tag}")
        consumer.subscribe([topics.trades])
        seen = 0
        began = first = time.perf_counter()
        while seen < len(trades) and time.perf_counter() - began < 120:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error() is None:
                    if seen == 0:
                        first = time.perf_counter()  # group join and start-up: not throughput
                    json.loads(msg.value() or b"")
                    seen += 1
        consumer.close()
        return seen / (time.perf_counter() - first)

    def pipeline() -> float:
        """The feature pipeline over the round's trades, from the first trade it reads."""
        group = f"features-{uuid.uuid4().hex[:6]}"
        pipeline = FeaturePipeline(local, group_id=group, commit_interval_s=5.0)
        thread = threading.Thread(target=pipeline.run, kwargs={"max_seconds": 300})
        began = time.perf_counter()
        thread.start()
        while pipeline.stats.trades == 0 and time.perf_counter() - began < 120:
            time.sleep(0.001)
        first = time.perf_counter()  # Feast's import and the group join are start-up
        while pipeline.stats.trades < len(trades) and time.perf_counter() - began < 300:
            time.sleep(0.01)
        elapsed = time.perf_counter() - first
        pipeline.stop.set()
        thread.join(60)
        return pipeline.stats.trades / elapsed

    ref, value = interleaved(runs, bare, pipeline)
    return Figure(
        "feature pipeline via Kafka, Feast online, offline parts",
        value,
        "trades/s",
        "bare consumer + json",
        ref,
        value / ref,
        ">= 50,000 trades/s",
    )


def bench_offline_append(settings: Settings) -> tuple[Figure, Figure]:
    def rows(n: int, offset: int = 0) -> pd.DataFrame:
        market = SyntheticMarket(["A", "B", "C", "D"], seed=3, start_ts=0, trades_per_candle=2)
        processor = FeatureProcessor(60, 0, 5)
        out = []
        for trade in market.candles_of_trades(n // 4 + 20):
            out.extend(processor.on_trade(trade).features)
            if len(out) >= n:
                break
        return features_frame(out[:n])

    batch = rows(100)
    base = rows(10_000)

    def history(n: int) -> Path:
        directory = Path(tempfile.mkdtemp(dir=settings.state)) / "features"
        for _ in range(n // len(base)):
            fs.append_parquet(directory, base)
        return directory

    def append_cost(directory: Path) -> float:
        began = time.perf_counter()
        fs.append_parquet(directory, batch)
        return time.perf_counter() - began

    def rewrite_cost(path: Path) -> float:
        # what a single-file offline push does: read everything, add, write everything
        began = time.perf_counter()
        whole = pd.concat([pd.read_parquet(path), batch], ignore_index=True)
        whole.to_parquet(path)
        return time.perf_counter() - began

    small, large = history(10_000), history(1_000_000)
    t_small = statistics.median(append_cost(small) for _ in range(7))
    t_large = statistics.median(append_cost(large) for _ in range(7))
    single_small = small.parent / "single-small.parquet"
    single_large = large.parent / "single-large.parquet"
    fs.read_parquet_dir(small).to_parquet(single_small)
    fs.read_parquet_dir(large).to_parquet(single_large)
    r_small = statistics.median(rewrite_cost(single_small) for _ in range(3))
    r_large = statistics.median(rewrite_cost(single_large) for _ in range(3))
    return (
        Figure(
            "offline append of 100 rows at 1M rows of history",
            t_large * 1e3,
            "ms",
            "at 10k rows",
            t_small * 1e3,
            t_large / t_small,
            "ratio <= 1.5",
        ),
        Figure(
            "whole-file rewrite of 100 rows at 1M rows (Feast file push)",
            r_large * 1e3,
            "ms",
            "at 10k rows",
            r_small * 1e3,
            r_large / r_small,
            "why rtml appends parts",
        ),
    )
