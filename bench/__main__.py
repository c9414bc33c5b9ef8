"""`make bench`: throughput and cost figures, each beside a reference measured in the same run.

These machines are shared and noisy, so a figure alone says little; the ratio to a reference
taken moments before or after, on the same data, is what the report leads with. Runs its own
embedded Kafka and Redis in a temporary state directory.
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bench.children import warm_start_child
from bench.figure import Figure
from bench.scale import bench_symbols
from rtml import feature_store as fs
from rtml.app.stack import Stack, free_port
from rtml.kafka import Topics, encode, ensure_topics, make_consumer, make_producer, send
from rtml.pipelines.features.feature_pipeline import FeaturePipeline
from rtml.pipelines.features.feed import backfill, publish
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.features.sink import features_frame
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.records import Example, parse_trade
from rtml.settings import Settings


def _best_of(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


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

    ref = len(raw) / _best_of(3, decode_only)
    value = len(raw) / _best_of(3, pipeline)
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
    of `runs` of each, in turn (`_interleaved`). Each round publishes the same market under
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

    ref, value = _interleaved(runs, bare, pipeline)
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


def _bare_consume_rate(settings: Settings, topic: str, n: int) -> float:
    """Records/s a bare consumer gets from `topic` (`n` records), touching nothing: what the
    broker delivers to one consumer, the ceiling of anything that reads through it."""
    consumer = make_consumer(settings, f"bare-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    seen = 0
    began = first = time.perf_counter()
    while seen < n and time.perf_counter() - began < 120:
        for msg in consumer.consume(num_messages=1000, timeout=0.2):
            if msg.error() is None:
                if seen == 0:
                    first = time.perf_counter()  # group join and start-up are not throughput
                seen += 1
    consumer.close()
    return seen / (time.perf_counter() - first)


def _interleaved(runs: int, *measures: Callable[[], float]) -> list[float]:
    """The best rate of each of `measures` over `runs` rounds, each round running every one
    once, in turn. These machines are shared and their speed drifts by half within a minute:
    a subject and its reference measured apart, or one best of several short runs against one
    long run, would mostly compare moments."""
    best = [0.0] * len(measures)
    for _ in range(runs):
        for i, measure in enumerate(measures):
            best[i] = max(best[i], measure())
    return best


def _trainer_in_memory(local: Settings, records: list[bytes]) -> Callable[[], float]:
    """Examples/s of the trainer's own loop (the runner, parsing, checks, the learner with its
    metrics and drift) over `records` from memory: what it costs without the broker."""
    from confluent_kafka import Message

    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model
    from rtml.pipelines.training.trainer import Trainer
    from rtml.runner import Runner
    from rtml.testing import MemorySink, MemorySource

    topic = Topics.of(local).examples
    messages = [
        Message(topic=topic, partition=0, offset=i, key=b"k", value=value)
        for i, value in enumerate(records)
    ]

    def run() -> float:
        trainer = Trainer(local.model_copy(update={"checkpoint_every": len(records) + 1}))
        trainer.learner = Learner(
            build_model(local.model, local.model_params, local.target), window=local.metrics_window
        )
        batches = [messages[i : i + 1000] for i in range(0, len(messages), 1000)]
        source = MemorySource(batches, [(topic, 0)])
        runner = Runner(source, MemorySink(), trainer.step, trainer.counters, stop=source.drained)
        began = time.perf_counter()
        runner.run()
        return len(records) / (time.perf_counter() - began)

    return run


def _trainer_via_kafka(local: Settings, n: int) -> Callable[[], float]:
    """Examples/s of a trainer learning the `n` examples on `examples`, each run a new model
    (its own registered name) reading the topic from the start. Start-up (MLflow, the warm
    start, the first fetch) is not throughput: the clock starts at the first example learned."""
    from rtml import registry
    from rtml.pipelines.training.models import build_model
    from rtml.pipelines.training.trainer import Trainer

    runs = 0

    def run() -> float:
        nonlocal runs
        runs += 1
        settings = local.model_copy(update={"model_name": f"{local.model_name}-{runs}"})
        # a version is registered already: registering a trainer's first version is a one-off
        # of a new model (seconds of MLflow work), later ones come every RTML_REGISTER_INTERVAL_S
        first_version = registry.log_version(settings, build_model("linear"))
        registry.set_alias(settings, registry.CANDIDATE, first_version)
        trainer = Trainer(settings)
        thread = threading.Thread(target=trainer.run, kwargs={"max_examples": n})
        thread.start()
        while (trainer.learner is None or trainer.learner.learned == 0) and thread.is_alive():
            time.sleep(0.001)
        first = time.perf_counter()
        start_count = trainer.learner.learned if trainer.learner else 0
        while trainer.learner is not None and trainer.learner.learned < n:
            if not thread.is_alive():
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - first
        learned = (trainer.learner.learned if trainer.learner else 0) - start_count
        thread.join(120)
        return learned / elapsed

    return run


def bench_trainer(settings: Settings, n_candles: int, checkpoint_every: int = 1000) -> list[Figure]:
    """The trainer's loop (Kafka, parsing, metrics, drift, checkpoints to MLflow) against a bare
    River predict-then-learn loop over the same examples; beside it, the same loop over the
    records from memory, and what a bare consumer gets from the broker. Each is the best of
    three, the three measured in turn (`_interleaved`)."""
    from rtml.pipelines.features.indicators import FEATURE_BOUNDS, TARGET_BOUNDS
    from rtml.pipelines.training.models import build_model
    from rtml.records import examples_reader

    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={
            "topic_prefix": f"bench{tag}.",
            "symbols": tuple(f"{s}{tag}" for s in "ABCD"),
            "model_name": f"bench-{tag}",
            "checkpoint_every": checkpoint_every,
            "checkpoint_interval_s": 30.0,
        }
    )
    topics = Topics.of(local)
    ensure_topics(local, [topics.examples], partitions=1)
    ensure_topics(local, topics.with_dlqs())
    market = SyntheticMarket(local.symbols, seed=5, start_ts=1_700_000_000, trades_per_candle=2)
    processor = FeatureProcessor(60, 0, 5)
    records = [
        encode(ex.to_json())
        for trade in market.candles_of_trades(n_candles)
        for ex in processor.on_trade(trade).examples
    ]
    # whole batches of the runner's 1000: a last, part batch would wait out the poll timeout
    # for records that never come, a pause at the end of a finite topic, not a cost of learning
    records = records[: len(records) // 1000 * 1000]
    producer = make_producer(local)
    for record in records:
        producer.produce(topics.examples, key=b"k", value=record)
        producer.poll(0)
    producer.flush(30)

    reader = examples_reader(FEATURE_NAMES, FEATURE_BOUNDS, TARGET_BOUNDS)
    examples = [reader.read(r) for r in records]

    def bare() -> float:
        model = build_model(local.model, local.model_params, local.target)
        began = time.perf_counter()
        for ex in examples:
            model.predict_one(ex.features)
            model.learn_one(ex.features, ex.target)
        return len(examples) / (time.perf_counter() - began)

    delivered = _bare_consume_rate(local, topics.examples, len(records))
    ref, in_memory, value = _interleaved(
        3, bare, _trainer_in_memory(local, records), _trainer_via_kafka(local, len(records))
    )
    return [
        Figure(
            "trainer via Kafka with metrics, drift and MLflow checkpoints",
            value,
            "examples/s",
            f"bare River predict+learn loop of the same model ({local.model})",
            ref,
            value / ref,
            "ratio >= 0.6",
        ),
        Figure(
            "trainer's loop over the same records from memory (no broker)",
            in_memory,
            "examples/s",
            f"bare River predict+learn loop of the same model ({local.model})",
            ref,
            in_memory / ref,
            "",
        ),
        Figure(
            "trainer via Kafka (as above)",
            value,
            "examples/s",
            "bare consumer of the same topic, touching nothing",
            delivered,
            value / delivered,
            "",
        ),
    ]


def bench_staleness(settings: Settings, seconds: float = 30.0, rate: float = 100.0) -> list[Figure]:
    """From an example's arrival on `examples` to a served model that has learned it.

    A trainer (checkpointing every `checkpoint_interval_s`) and a predictor's model holder
    (polling the champion alias every `model_poll_s`) run as they would in production; examples
    arrive at `rate` per second. The gate replaces a champion only once the candidate has been
    scored on `gate.MIN_EXAMPLES` (50) examples the champion has not learned, so at `rate` that
    alone takes 50 / `rate` seconds, and examples keep arriving until each one measured has
    been served. Reference: one bare MLflow round trip in the same run (log a version, point
    the alias at it, load it back), the least any served update costs.
    """
    from rtml.pipelines.features.indicators import FEATURE_NAMES
    from rtml.pipelines.training.trainer import Trainer
    from rtml.records import Example
    from rtml.serving.model_holder import ModelHolder

    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={
            "topic_prefix": f"stale{tag}.",
            "symbols": (f"T{tag}",),
            "model_name": f"stale-{tag}",
            "checkpoint_every": 10_000,
            "checkpoint_interval_s": 0.5,
            "register_interval_s": 0.0,  # the loop's own latency: each checkpoint a version
            "gate_z": -1e9,  # a margin every candidate clears: measure the path, not the gate
            "gate_alpha": 1.0,
            "max_mae": 1.0,
            "metrics_window": 50,
        }
    )
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    symbol = local.symbols[0]

    def example(i: int) -> Example:
        x = {n: ((i * 7 + k) % 13) / 1000 for k, n in enumerate(FEATURE_NAMES)}  # in bounds
        ts = 1_700_000_000.0 + 60 * i
        return Example(symbol, ts, ts + 300, x, 0.8 * x["ret_1"] - 0.3 * x["ret_5"])

    reference = [_mlflow_round_trip(local, example(i)) for i in range(5)]

    producer = make_producer(local)
    for i in range(100):  # a history the first version learns, so the gate has an error to judge
        producer.produce(topics.examples, key=symbol.encode(), value=encode(example(i).to_json()))
    producer.flush(30)
    trainer = Trainer(local)
    runner = threading.Thread(target=trainer.run, kwargs={"max_seconds": seconds + 60})
    runner.start()
    holder = ModelHolder(local)
    holder.start()
    try:
        staleness = _arrival_to_served(
            producer, topics.examples, holder, example, 100, seconds, rate
        )
    finally:
        trainer.stop.set()
        holder.stop()
        runner.join(60)
    ref = statistics.median(reference)
    p50, p99 = _percentile(staleness, 0.5), _percentile(staleness, 0.99)
    label = (
        f"{rate:g} examples/s, poll {local.model_poll_s:g} s, "
        f"checkpoint {local.checkpoint_interval_s:g} s"
    )
    return [
        Figure(
            f"staleness p50, example -> served model ({label})",
            p50,
            "s",
            "bare MLflow log+alias+load",
            ref,
            p50 / ref,
            "p50 <= 2 s",
        ),
        Figure(
            f"staleness p99, example -> served model ({label})",
            p99,
            "s",
            "bare MLflow log+alias+load",
            ref,
            p99 / ref,
            "p99 <= 5 s",
        ),
    ]


def _arrival_to_served(
    producer: Any,
    topic: str,
    holder: Any,
    example: Callable[[int], Any],
    first: int,
    seconds: float,
    rate: float,
) -> list[float]:
    """Produce examples from number `first` on at `rate`; for each produced in the first
    `seconds`, the seconds until the served model's trained-through watermark covers its
    label time. Examples go on arriving after that (as a stream does) until each of those is
    served, or 60 s more have passed."""

    def through() -> float:
        """The served model's trained-through time; -inf for none, or the naive baseline
        (which learned nothing: NaN)."""
        current = holder.current
        learned = current.trained_through if current is not None else -math.inf
        return learned if math.isfinite(learned) else -math.inf

    deadline = time.monotonic() + 120
    while through() < example(first - 1).label_ts:
        if time.monotonic() > deadline:
            raise RuntimeError("the trainer never promoted a version that learned the history")
        time.sleep(0.01)
    arrived: dict[float, float] = {}  # label time -> when its example was produced
    staleness: list[float] = []
    served_through = through()
    i, start = first, time.perf_counter()
    next_send = start
    while time.perf_counter() - start < seconds or (
        arrived and time.perf_counter() - start < seconds + 60
    ):
        now = time.perf_counter()
        while now >= next_send:
            ex = example(i)
            producer.produce(topic, key=ex.symbol.encode(), value=encode(ex.to_json()))
            producer.poll(0)
            if now - start < seconds:
                arrived[ex.label_ts] = time.perf_counter()
            i, next_send = i + 1, next_send + 1 / rate
        if (now_through := through()) > served_through:
            served_through, seen = now_through, time.perf_counter()
            for label_ts in [t for t in arrived if t <= served_through]:
                staleness.append(seen - arrived.pop(label_ts))
        time.sleep(0.005)
    if arrived:
        raise RuntimeError(f"{len(arrived)} examples never reached a served model")
    return staleness


def _mlflow_round_trip(settings: Settings, example: Any) -> float:
    """Seconds to log one small model version, point an alias at it and load it back."""
    from rtml import registry
    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model

    name = f"{settings.model_name}-reference"
    learner = Learner(build_model("linear"))
    learner.step(example)
    began = time.perf_counter()
    version = registry.log_version(
        settings,
        learner.model,
        name=name,
        feature_names=FEATURE_NAMES,
        metadata={"trained_through": learner.watermark},
    )
    registry.client(settings).set_registered_model_alias(name, registry.CHAMPION, version)
    registry.load_version(settings, version, name=name)
    return time.perf_counter() - began


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_predictor(settings: Settings, seconds: float = 8.0, rate: float = 500.0) -> list[Figure]:
    """HTTP latency at a fixed request rate, beside bare Feast reads; streaming throughput."""
    from rtml import registry
    from rtml.pipelines.features.indicators import FEATURE_NAMES
    from rtml.pipelines.features.sink import FeatureSink
    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model
    from rtml.records import Example, FeatureRow
    from rtml.serving.model_holder import ModelHolder

    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={
            "model_name": f"serve-{tag}",
            "topic_prefix": f"bench{tag}.",
            "symbols": (f"S{tag}",),
        }
    )
    learner = Learner(build_model("linear"))
    for t in range(500):
        x = {n: (t % 7) / 100 for n in FEATURE_NAMES}
        learner.step(Example("S", float(t), float(t + 300), x, x["ret_1"]))
    registry.promote(local, registry.log_version(local, learner.model))
    symbol = local.symbols[0]
    row = FeatureRow(symbol, time.time(), {n: 0.01 for n in [*FEATURE_NAMES, "close", "volume"]})
    store = fs.open_store(local)
    FeatureSink(local, store, producer=None).write_online([row])

    holder = ModelHolder(local)
    holder.refresh()
    runs, bare_runs, bare = _http_latencies(local, store, symbol, seconds, [100.0, rate])
    stream_rate, bare_rate, delivered = _streaming_rate(local, holder, learner, row)
    b50, b99 = _percentile(bare, 0.5) * 1e3, _percentile(bare, 0.99) * 1e3
    figures = []
    for run, ref in zip(runs, bare_runs, strict=True):
        at = f"at {run.offered:.0f} req/s offered, {run.achieved:.0f} served ({run.placement})"
        against = (
            f"bare Feast HTTP server, {ref.achieved:.0f} served "
            f"(a Feast read in-process: p50 {b50:.1f} ms, p99 {b99:.1f} ms)"
        )
        figures += [
            Figure(
                f"HTTP /predict p50 {at}",
                run.p50 * 1e3,
                "ms",
                f"{against}, p50",
                ref.p50 * 1e3,
                run.p50 / ref.p50,
                "",
            ),
            Figure(
                f"HTTP /predict p99 {at}",
                run.p99 * 1e3,
                "ms",
                f"{against}, p99",
                ref.p99 * 1e3,
                run.p99 / ref.p99,
                "p99 <= 5 ms at 500 req/s",
            ),
        ]
    return [
        *figures,
        Figure(
            "streaming predictions via Kafka",
            stream_rate,
            "predictions/s",
            "bare predict_one loop",
            bare_rate,
            stream_rate / bare_rate,
            "ratio >= 0.3",
        ),
        Figure(
            "streaming predictions via Kafka (as above)",
            stream_rate,
            "predictions/s",
            "bare consumer of the same topic, touching nothing",
            delivered,
            stream_rate / delivered,
            "",
        ),
    ]


@dataclass(frozen=True)
class HttpRun:
    offered: float
    achieved: float
    p50: float
    p99: float
    placement: str  # which CPUs the server and the load generator ran on


def _placement() -> tuple[set[int] | None, set[int] | None, str]:
    """The server's CPUs and the load generator's: apart when the machine has two or more."""
    import os

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, "server and load share 1 CPU"
    server, load = set(cpus[:-1]), {cpus[-1]}
    return server, load, f"server on CPU {sorted(server)}, load on CPU {sorted(load)}"


def _http_latencies(
    local: Settings, store: Any, symbol: str, seconds: float, rates: list[float]
) -> tuple[list[HttpRun], list[HttpRun], list[float]]:
    """Latency of `rtml serve` and of the bare Feast server of `bench/bare_server.py`, each in
    its own process on the same CPUs, loaded in turn by the open-loop generator of
    `bench/loadgen.py` in another, at each rate; with the latencies of bare Feast reads in
    this process, in seconds."""
    import multiprocessing

    from bench import loadgen

    bare = []
    for _ in range(2000):
        began = time.perf_counter()
        fs.online_features(store, [symbol], with_timestamps=True)
        bare.append(time.perf_counter() - began)

    server_cpus, load_cpus, placement = _placement()
    servers = {
        "rtml": _start_server(local, ["-m", "rtml.app.cli", "serve"], server_cpus),
        "bare": _start_server(local, ["-m", "bench.bare_server"], server_cpus),
    }
    runs: dict[str, list[HttpRun]] = {name: [] for name in servers}
    try:
        for process, url in servers.values():
            _wait_and_warm(process, f"{url}/predict/{symbol}")
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            for rate in rates:
                for name, (_, url) in servers.items():
                    run = pool.apply(
                        loadgen.run, (f"{url}/predict/{symbol}", rate, seconds), {"cpus": load_cpus}
                    )
                    if run.failed:
                        raise RuntimeError(
                            f"{run.failed} requests to the {name} server failed at {rate}/s"
                        )
                    runs[name].append(
                        HttpRun(
                            run.offered,
                            run.achieved,
                            _percentile(run.latencies, 0.5),
                            _percentile(run.latencies, 0.99),
                            placement,
                        )
                    )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
    return runs["rtml"], runs["bare"], bare


def _start_server(local: Settings, args: list[str], cpus: set[int] | None) -> tuple[Any, str]:
    """A server process on a free port, pinned to `cpus` before it has loaded anything."""
    import os
    import subprocess

    port = free_port()
    server_settings = local.model_copy(update={"api_port": port, "api_access_log": False})
    env = server_settings.child_env(
        "state_dir",
        "kafka_port",
        "redis_port",
        "mlflow_port",
        "model_name",
        "api_port",
        "api_access_log",
    )
    process = subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    return process, f"http://127.0.0.1:{port}"


def _wait_and_warm(process: Any, url: str) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    for _ in range(200):  # warm up
        httpx.get(url).raise_for_status()


def _streaming_rate(
    local: Settings, holder: Any, learner: Any, row: Any
) -> tuple[float, float, float]:
    from rtml.pipelines.features.indicators import FEATURE_NAMES
    from rtml.records import FeatureRow
    from rtml.serving.stream import StreamingPredictor

    symbol = local.symbols[0]
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    producer = make_producer(local)
    n = 100_000  # seconds of work: the consumer's first fetches are not the steady state
    for i in range(n):
        event = FeatureRow(symbol, 1_700_000_000 + 60 * i, row.values)
        send(producer, topics.features, encode(event.to_json()), symbol.encode())
        producer.poll(0)
    producer.flush(30)
    xs = [{n: 0.01 for n in FEATURE_NAMES}] * n

    def bare() -> float:
        began = time.perf_counter()
        for x in xs:
            learner.predict_one(x)
        return n / (time.perf_counter() - began)

    def streaming() -> float:
        """One predictor reading the topic from the start in a group of its own; its start-up
        (the group join, the first fetch) is not throughput."""
        streamer = StreamingPredictor(local, holder, group_id=f"bench-{uuid.uuid4().hex[:6]}")
        runner = threading.Thread(target=streamer.run, kwargs={"max_seconds": 120})
        runner.start()
        while streamer.predicted == 0 and runner.is_alive():
            time.sleep(0.001)
        first = time.perf_counter()
        while streamer.predicted < n and runner.is_alive():
            time.sleep(0.005)
        rate = streamer.predicted / (time.perf_counter() - first)
        streamer.stop.set()
        runner.join(30)
        return rate

    delivered = _bare_consume_rate(local, topics.features, n)
    bare_rate, stream_rate = _interleaved(3, bare, streaming)
    return stream_rate, bare_rate, delivered


def bench_drift(
    settings: Settings, seconds: float = 240.0, speed: float = 300.0, refit_every: int = 60
) -> list[Figure]:
    """Learning quality under drift, through the real system: `rtml demo` on the regime-switching
    market, then the served predictions beside (b) the initial fit alone, (c) a batch refit
    every `refit_every` candles on everything labelled so far, and (d) the naive no-change.
    """
    import math

    from rtml.app.demo import Demo
    from rtml.pipelines.training.dataset import fit, offline_examples
    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model

    local = settings.model_copy(update={"api_port": free_port(), "monitor_port": free_port()})
    # versions at most every 2 s of wall clock: at 300x, one per 10 minutes of market time (the
    # default 120 s would be one per 10 hours, and the champion could not follow the regimes)
    demo = Demo(
        local,
        speed=speed,
        status_every=15.0,
        out=lambda m: print(m, file=sys.stderr),
        register_interval_s=2.0,
    )
    ev = demo.run(seconds)
    for line in demo.report(ev):
        print(line, file=sys.stderr)
    start = demo.stream_start
    assert start is not None and ev.ts, "the demo scored no examples"
    history = [ex for ex in offline_examples(demo.settings) if ex.label_ts <= start]
    stream = sorted(
        (
            Example(sym, ts, lts, x, y)
            for sym, ts, lts, x, y in zip(
                ev.symbol, ev.ts, ev.label_ts, ev.features, ev.target, strict=True
            )
        ),
        key=lambda e: e.label_ts,
    )
    step = local.candle_seconds
    refit: list[float] = []
    block, model = -1, None
    for ts, x in zip(ev.ts, ev.features, strict=True):
        b = int((ts - start) // (refit_every * step))
        if b != block:  # refit on what was labelled by the block's start
            cutoff = start + b * refit_every * step
            learner = Learner(build_model(local.model, local.model_params, local.target))
            known = [e for e in stream if e.label_ts <= cutoff]
            fit(learner, history + known, local.warm_start_epochs, progress=False)
            block, model = b, learner.model
        assert model is not None
        refit.append(float(model.predict_one(x)))
    # the learner as it would serve with no gate and no registry: each example predicted by
    # the model as it was when the example's features were new
    learner = Learner(build_model(local.model, local.model_params, local.target))
    fit(learner, history, local.warm_start_epochs, progress=False)
    ungated = []
    pending = iter(stream)
    upcoming = next(pending, None)
    for ts, x in zip(ev.ts, ev.features, strict=True):
        while upcoming is not None and upcoming.label_ts <= ts:
            learner.step(upcoming)
            upcoming = next(pending, None)
        ungated.append(float(learner.predict_one(x)))
    naive = [0.0] * len(ev.target)
    curves = {
        "incremental champion (served)": ev.served,
        "static (initial fit)": ev.static,
        f"batch refit every {refit_every} candles": refit,
        "naive (no change)": naive,
    }
    mae = {name: ev.mae(p) * 1e4 for name, p in curves.items()}
    # where the served error is lost: each curve's MAE over eight stretches of the stream
    parts = 8
    cut = [len(ev.target) * i // parts for i in range(parts + 1)]
    stretches = {
        name: [
            round(
                1e4
                * sum(abs(a - b) for a, b in zip(p[i:j], ev.target[i:j], strict=True))
                / (j - i),
                2,
            )
            for i, j in itertools.pairwise(cut)
        ]
        for name, p in {**curves, "learner, ungated and unregistered": ungated}.items()
    }
    learned = [
        round(sum(v != 0 for v in ev.versions[i:j]) / (j - i), 2)
        for i, j in itertools.pairwise(cut)
    ]
    _plot_drift(ev, curves, start, step, demo.seed, local.symbols)
    Path("bench-results/drift.json").write_text(
        json.dumps(
            {
                "mae_bp": mae,
                "ungated_learner_mae_bp": ev.mae(ungated) * 1e4,
                "stretches_mae_bp": stretches,
                "stretches_served_by_a_model": learned,
                "examples": len(ev.target),
                "stream_start": start,
            },
            indent=2,
        )
    )
    a, b_, c, d = mae.values()
    assert all(math.isfinite(v) for v in mae.values())
    return [
        Figure(
            "drift: MAE of the incremental champion",
            a,
            "bp",
            "static initial fit",
            b_,
            a / b_,
            "≤ 0.8",
        ),
        Figure(
            "drift: MAE of the incremental champion",
            a,
            "bp",
            f"batch refit every {refit_every} candles",
            c,
            a / c,
            "≤ 1",
        ),
        Figure(
            "drift: MAE of the incremental champion", a, "bp", "naive no-change", d, a / d, "< 1"
        ),
    ]


def _plot_drift(
    ev: Any,
    curves: dict[str, list[float]],
    start: float,
    step: int,
    seed: int,
    symbols: tuple[str, ...],
    bin_candles: int = 30,
) -> None:
    """MAE over time of each model, with the market's regimes shaded behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candle = [(ts - start) / step for ts in ev.ts]
    last = max(candle)
    bins = int(last // bin_candles) + 1
    fig, ax = plt.subplots(figsize=(11, 5))
    market = SyntheticMarket(symbols, seed=seed, start_ts=start, candle_seconds=step)
    for _ in market.candles_of_trades(int(last) + 1):
        pass
    switches = market.regime_log
    colors = {
        "calm-momentum": "#e8f4e8",
        "calm-reversion": "#e8ecf8",
        "volatile-momentum": "#fbe8d8",
        "volatile-reversion": "#f6dff0",
    }
    for i, (ts, name) in enumerate(switches):
        end = switches[i + 1][0] if i + 1 < len(switches) else start + (last + 1) * step
        ax.axvspan(
            (ts - start) / step,
            (end - start) / step,
            color=colors.get(name, "#eee"),
            label=f"market regime: {name}",
        )
    for name, predictions in curves.items():
        sums, counts = [0.0] * bins, [0] * bins
        for c, p, t in zip(candle, predictions, ev.target, strict=True):
            sums[int(c // bin_candles)] += abs(p - t) * 1e4
            counts[int(c // bin_candles)] += 1
        xs = [(i + 0.5) * bin_candles for i in range(bins) if counts[i]]
        ys = [sums[i] / counts[i] for i in range(bins) if counts[i]]
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left")
    ax.set_xlabel("candles since the stream began")
    ax.set_ylabel(f"MAE of the {len(symbols)} symbols, basis points ({bin_candles}-candle bins)")
    ax.set_title("Learning under drift: served incremental champion vs alternatives")
    fig.tight_layout()
    fig.savefig("bench-results/drift.png", dpi=110)
    plt.close(fig)


def bench_warm_start(settings: Settings, days: tuple[int, ...] = (1, 4, 16)) -> list[Figure]:
    """Warm start (point-in-time join from Feast, then the fit) on 1, 4 and 16 days of
    1-minute candles for 3 symbols; each size has its own symbols and time span."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    measured: dict[int, tuple[float, float, int]] = {}
    for n in days:
        local = settings.model_copy(update={"symbols": tuple(f"W{n}{c}" for c in "ABC")})
        start = 1_600_000_020.0 + n * 40 * 86_400  # spans never overlap
        market = SyntheticMarket(local.symbols, seed=n, start_ts=start, trades_per_candle=2)
        backfill(local, market.candles_of_trades(n * 1440), write_online=False)
        env = local.as_env("state_dir", "kafka_port", "redis_port", "mlflow_port", "symbols")
        queue = context.Queue()
        child = context.Process(target=warm_start_child, args=(env, queue))
        child.start()
        measured[n] = queue.get(timeout=3600)
        child.join(60)
        seconds, rss, examples = measured[n]
        print(f"  {n} days: {examples} examples, {seconds:.1f} s, {rss:.0f} MB", file=sys.stderr)
    small, middle, large = (measured[n] for n in days)
    scale = f"{days[2]}d vs {days[1]}d"
    return [
        Figure(
            f"warm start seconds, {days[2]} days of 1-min candles x 3 symbols",
            large[0],
            "s",
            f"{days[1]} days",
            middle[0],
            large[0] / middle[0],
            f"{scale} <= 5 (linear is 4)",
        ),
        Figure(
            f"warm start peak RSS, {days[2]} days of 1-min candles x 3 symbols",
            large[1],
            "MB",
            f"{days[1]} days",
            middle[1],
            large[1] / middle[1],
            f"{scale} <= 5, and <= 1,536 MB",
        ),
        Figure(
            f"warm start seconds, {days[1]} days",
            middle[0],
            "s",
            f"{days[0]} day",
            small[0],
            middle[0] / small[0],
            "for the record (linear is 4)",
        ),
    ]


def bench_read_back(
    settings: Settings, sizes: tuple[int, int] = (50_000, 1_000_000), since: int = 2_000
) -> Figure:
    """What a feature pipeline reads back at an assignment (`pipelines/features/recovery.py`): its
    outputs since the commit record's starts, with 50k and 1M records already on `features`
    and the same `since` records after the last commit in both. Constant is 1."""
    from rtml.pipelines.features.recovery import Replay

    seconds = []
    for n in sizes:
        tag = uuid.uuid4().hex[:6]
        local = settings.model_copy(update={"topic_prefix": f"bench{tag}."})
        topics = Topics.of(local)
        ensure_topics(local, topics.with_dlqs())
        ends: dict[tuple[str, int], int] = {}

        def delivered(error: object, msg: Any, ends: dict[tuple[str, int], int] = ends) -> None:
            if error is None:
                where = (msg.topic(), msg.partition())
                ends[where] = max(ends.get(where, 0), msg.offset() + 1)

        producer = make_producer(local, on_delivery=delivered)
        values = {name: 0.001 for name in [*FEATURE_NAMES, "close", "volume"]}
        starts: dict[tuple[str, int], int] = {}
        for i in range(n):
            if i == n - since:
                producer.flush(120)
                starts = dict(ends)  # the commit record: where the outputs stood
            symbol = f"S{i % 10}"
            record = {"symbol": symbol, "ts": 1_700_000_000.0 + 60 * (i // 10), "features": values}
            send(producer, topics.features, encode(record), key=symbol.encode())
            if i % 10_000 == 0:
                producer.poll(0)
        producer.flush(120)
        began = time.perf_counter()
        replay, _ = Replay.read(local, [topics.features], starts, timeout=300)
        seconds.append(time.perf_counter() - began)
        if replay.records != since:
            raise RuntimeError(f"read back {replay.records} records, not the {since} since")
    return Figure(
        f"read back at an assignment, {sizes[1]:,} records on the topic",
        seconds[1],
        "s",
        f"{sizes[0]:,} records",
        seconds[0],
        seconds[1] / seconds[0],
        "constant is 1 (goal <= 1.5)",
    )


STEPS: dict[str, Callable[[Settings], list[Figure]]] = {
    "processor": lambda _: [bench_processor(600)],
    "pipeline": lambda s: [bench_kafka_pipeline(s, 600)],
    "read-back": lambda s: [bench_read_back(s)],
    "offline": lambda s: list(bench_offline_append(s)),
    "trainer": lambda s: bench_trainer(s, 15_000),
    "predictor": bench_predictor,
    "staleness": bench_staleness,
    "drift": bench_drift,
    "warm-start": bench_warm_start,
    "symbols": bench_symbols,
}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(STEPS),
        help=f"comma-separated steps to run, of: {', '.join(STEPS)}; the README is updated "
        "only when all run",
    )
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    out_dir = Path("bench-results")
    out_dir.mkdir(exist_ok=True)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            state_dir=Path(tmp),
            kafka_port=free_port(),
            redis_port=free_port(),
            mlflow_port=free_port(),
        )
        stack = Stack(settings, repick_ports=True)
        print("starting the embedded stack for the benchmark...", file=sys.stderr)
        try:  # a start that fails half way stops what it started, before its folder goes
            stack.up()
            settings = stack.settings  # the ports the services listen on
            for name in only:
                print(f"[{name}]", file=sys.stderr)
                for figure in STEPS[name](settings):
                    figures.append(figure)
                    print(figure.row(), file=sys.stderr)
        finally:
            stack.down()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, {platform.python_version()}, {_cores()} cores"
    lines = [
        f"Benchmarks of {stamp} on {machine}.",
        "",
        "| figure | value | reference (same run) | ratio | goal |",
        "|---|---|---|---|---|",
        *(f.row() for f in figures),
    ]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "report.json").write_text(
        json.dumps(
            {"date": stamp, "machine": machine, "figures": [asdict(f) for f in figures]}, indent=2
        )
    )
    if only == list(STEPS):
        _into_readme(Path("docs/benchmarks.md"), "\n".join(lines))  # every figure
        headline = [next((f for f in figures if f.name.startswith(h)), None) for h in HEADLINE]
        rows = [f.row() for f in headline if f is not None]
        _into_readme(Path("README.md"), "\n".join([*lines[:4], *rows]))  # one of each goal
        plot = out_dir / "drift.png"
        if plot.exists():  # the README shows the newest full run's plot
            Path("docs").mkdir(exist_ok=True)
            shutil.copyfile(plot, Path("docs") / "bench-drift.png")
    print("\n".join(lines))


HEADLINE = (
    "feature pipeline via Kafka",
    "trainer via Kafka with metrics",
    "HTTP /predict p99 at 491",
    "streaming predictions via Kafka",
    "drift: MAE of the incremental champion",
    "warm start seconds, 16 days",
)
"""The figures the README shows, the first of each name; docs/benchmarks.md shows them all."""


def _into_readme(readme: Path, table: str) -> None:
    """Put the table between the README's bench markers, so its numbers are the report's."""
    if not readme.exists():
        return
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
