"""The feature pipeline emits each output once: through `kill -9`, replicas joining and leaving."""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from rtml import feature_store as fs
from rtml.kafka import (
    Topics,
    consumer_config,
    dlq,
    ensure_topics,
    make_producer,
    read_messages,
    read_topic,
)
from rtml.pipelines.features.feature_pipeline import FeaturePipeline
from rtml.pipelines.features.feed import publish
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.settings import Settings

pytestmark = pytest.mark.integration

H = 3
KILLS = 2
COMMIT_S = 2.0
Key = tuple[str, float]


def _market(stack_settings: Settings, prefix: str, symbols: int, candles: int, seed: int) -> Any:
    tag = uuid.uuid4().hex[:6]
    settings = stack_settings.model_copy(
        update={
            "topic_prefix": f"{prefix}{tag}.",
            "symbols": tuple(f"S{i}{tag}" for i in range(symbols)),
            "horizon": H,
        }
    )
    ensure_topics(settings, Topics.of(settings).with_dlqs(), partitions=4)
    start = (time.time() // 60 - candles - 5) * 60
    trades = list(
        SyntheticMarket(settings.symbols, seed=seed, start_ts=start).candles_of_trades(candles)
    )
    return settings, trades, f"features-{tag}"


def expected_outputs(settings: Settings, trades: list[Any]) -> tuple[dict[Key, Any], set[Key]]:
    """What one uninterrupted run emits: the same processor over the same trades."""
    processor = FeatureProcessor(
        settings.candle_seconds, settings.allowed_lateness_s, settings.horizon
    )
    features: dict[Key, dict[str, float]] = {}
    examples: set[Key] = set()
    for trade in trades:
        out = processor.on_trade(trade)
        features |= {(r.symbol, r.ts): r.values for r in out.features}
        examples |= {(e.symbol, e.ts) for e in out.examples}
    return features, examples


def _feed(settings: Settings, trades: list[Any], chunks: int, pause_s: float) -> threading.Thread:
    """The market arrives in `chunks` over time, from a thread."""
    producer = make_producer(settings)
    topic = Topics.of(settings).trades

    def feed() -> None:
        size = max(1, len(trades) // chunks)
        for i in range(0, len(trades), size):
            publish(producer, topic, trades[i : i + size])
            time.sleep(pause_s)

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


def _wait_for(settings: Settings, examples: set[Key], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {(e["symbol"], e["ts"]) for e in read_topic(settings, Topics.of(settings).examples)}
        if examples <= seen:
            return
        time.sleep(1)


def _wait_for_more(settings: Settings, topic: str, than: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(read_topic(settings, topic)) <= than:
        time.sleep(0.3)


def _assert_each_output_once(
    settings: Settings, features: dict[Key, Any], examples: set[Key]
) -> list[dict[str, Any]]:
    """Every expected feature row and example on its topic once, with the expected values; at
    most each symbol's last window besides (closed once it went idle). Returns the features."""
    topics = Topics.of(settings)
    got = read_topic(settings, topics.features)
    got_features = Counter((r["symbol"], r["ts"]) for r in got)
    got_examples = Counter((e["symbol"], e["ts"]) for e in read_topic(settings, topics.examples))
    assert [k for k, n in got_features.items() if n > 1] == []
    assert [k for k, n in got_examples.items() if n > 1] == []
    assert set(features) <= set(got_features)
    assert examples <= set(got_examples)
    extra = sorted(set(got_features) - set(features))
    assert len(extra) <= len(settings.symbols), (extra, max(ts for _, ts in features))
    for row in got:
        want = features.get((row["symbol"], row["ts"]))
        if want is not None:
            assert row["features"] == pytest.approx(want, rel=1e-9, abs=1e-12), row
    return got


def _assert_stored_once(settings: Settings, features: dict[Key, Any]) -> None:
    """The offline store holds each expected (symbol, time) once, in features and candles."""
    for dataset in (fs.FEATURES_DATASET, fs.CANDLES_DATASET):
        offline = fs.read_parquet_dir(settings.offline_dir / dataset)
        offline = offline[offline["symbol"].isin(settings.symbols)]
        stamps = offline["event_timestamp"].map(lambda t: t.timestamp())
        stored = Counter(zip(offline["symbol"], stamps, strict=True))
        assert [k for k, n in stored.items() if n > 1] == [], dataset
        assert set(features) <= set(stored), dataset


def _pipeline(settings: Settings, group: str) -> subprocess.Popen[bytes]:
    env = settings.child_env(
        "state_dir",
        "kafka_port",
        "redis_port",
        "mlflow_port",
        "topic_prefix",
        "symbols",
        "horizon",
        "candle_seconds",
        "allowed_lateness_s",
        "commit_interval_s",
        "kafka_session_timeout_ms",
        "kafka_heartbeat_interval_ms",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "rtml.app.cli", "features", "--group", group],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


SEEDS = range(5)


def _crash_and_finish(stack_settings: Settings, seed: int) -> None:
    """One market, one pipeline group: the pipeline is killed with SIGKILL at random moments
    while the market arrives, then a last one finishes it; each output must be there once."""
    rng = random.Random(seed)
    settings, trades, group = _market(stack_settings, "k", 3, 60, seed)
    # a restarted member waits for the killed one's session to end: kept short here
    settings = settings.model_copy(
        update={
            "commit_interval_s": COMMIT_S,
            "kafka_session_timeout_ms": 3000,
            "kafka_heartbeat_interval_ms": 500,
        }
    )
    want_features, want_examples = expected_outputs(settings, trades)
    topics = Topics.of(settings)
    producer = make_producer(settings)
    poison = [b"{oops", b'"' * 100_000]  # dead letters must not be doubled by a replay either
    for value in poison:
        producer.produce(topics.trades, key=settings.symbols[0].encode(), value=value)
    producer.flush(10)

    feeder = _feed(settings, trades, chunks=60, pause_s=0.6)
    try:
        for _ in range(KILLS):
            emitted = len(read_topic(settings, topics.features))
            proc = _pipeline(settings, group)
            # killed while it works: after it has sent something (start-up, and the group's
            # wait for the killed member's session to end, take seconds), at any point of
            # two commit intervals
            _wait_for_more(settings, topics.features, emitted, timeout=90)
            time.sleep(rng.uniform(0.0, 2 * COMMIT_S))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        feeder.join(90)
        proc = _pipeline(settings, group)  # the run that finishes the market
        # a replay re-sends, if at all, before it gets to the newest examples
        _wait_for(settings, want_examples, timeout=240)
    finally:
        proc.terminate()
        proc.wait(30)

    _assert_each_output_once(settings, want_features, want_examples)
    dead = [value for _, value in read_messages(settings, dlq(topics.trades))]
    assert len(dead) == len(poison), dead[:3]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_at_random_moments_leaves_no_duplicate_and_nothing_missing(
    stack_settings: Settings, stack: object
) -> None:
    """Five seeds, each its own market and group, run side by side (each is mostly waiting)."""
    with ThreadPoolExecutor(len(SEEDS)) as pool:
        runs = {seed: pool.submit(_crash_and_finish, stack_settings, seed) for seed in SEEDS}
        failed = {seed: run.exception() for seed, run in runs.items() if run.exception()}
    assert failed == {}


class _CommitWatch:
    """What a group has committed on `trades`, read every 0.2 s from a thread."""

    def __init__(self, settings: Settings, group: str) -> None:
        self.seen: list[dict[int, int]] = []
        self._stop = threading.Event()
        self._reader = Consumer(consumer_config(settings, group))
        self._partitions = [TopicPartition(Topics.of(settings).trades, p) for p in range(4)]
        self._thread = threading.Thread(target=self._watch)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            now = self._reader.committed(self._partitions, timeout=10)
            self.seen.append({tp.partition: tp.offset for tp in now if tp.offset >= 0})
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._reader.close()


def _wait_assigned(pipeline: FeaturePipeline, partitions: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(pipeline.assignment) != partitions:
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replicas_join_and_leave_mid_stream_without_a_duplicate_or_a_gap(
    stack_settings: Settings, stack: object
) -> None:
    settings, trades, group = _market(stack_settings, "r", 6, 60, seed=3)
    want_features, want_examples = expected_outputs(settings, trades)
    first, second = (
        FeaturePipeline(settings, group_id=group, commit_interval_s=1.0) for _ in range(2)
    )
    threads = [threading.Thread(target=p.run, kwargs={"max_seconds": 300}) for p in (first, second)]
    threads[0].start()
    _wait_assigned(first, 4)
    commits = _CommitWatch(settings, group)
    feeder = _feed(settings, trades, chunks=30, pause_s=0.5)
    time.sleep(4)
    threads[1].start()  # joins mid-stream: the partitions are shared
    _wait_assigned(second, 2)
    shared = (len(first.assignment), len(second.assignment))
    time.sleep(5)
    second.stop.set()  # leaves mid-stream: its partitions go back
    threads[1].join(60)
    feeder.join(60)
    _wait_for(settings, want_examples, timeout=120)
    time.sleep(2.5)  # one more commit
    first.stop.set()
    threads[0].join(60)
    commits.close()

    assert shared == (2, 2)
    assert first.stats.trades > 0 and second.stats.trades > 0
    _assert_each_output_once(settings, want_features, want_examples)
    _assert_stored_once(settings, want_features)
    assert read_messages(settings, dlq(Topics.of(settings).trades)) == []  # none dead-lettered
    assert len(commits.seen) > 10
    for before, after in itertools.pairwise(commits.seen):
        assert all(after.get(p, -1) >= offset for p, offset in before.items()), (before, after)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_replica_stalled_past_its_session_writes_nothing_when_it_wakes(
    stack_settings: Settings, stack: object
) -> None:
    """A replica is stopped (SIGSTOP) with candles open, past its session timeout and past
    the two candles of silence after which a symbol's open window is closed; another takes
    its partitions over while the rest of the market arrives. When the stalled one wakes
    (SIGCONT), its first turn would close those windows with the trades it had, before it
    hears that the group moved on. It asks the broker first, is refused, writes nothing and
    rejoins: every output is on its topic once, and in the offline store once.

    It is stopped once what it read is delivered: records already handed to the Kafka client
    before a stall still go out after it (docs/pipelines.md)."""
    seconds = 5
    tag = uuid.uuid4().hex[:6]
    settings = stack_settings.model_copy(
        update={
            "topic_prefix": f"z{tag}.",
            "symbols": tuple(f"S{i}{tag}" for i in range(4)),
            "horizon": H,
            "candle_seconds": seconds,
            "allowed_lateness_s": 1.0,
            "commit_interval_s": COMMIT_S,
            "kafka_session_timeout_ms": 3000,
            "kafka_heartbeat_interval_ms": 500,
        }
    )
    ensure_topics(settings, Topics.of(settings).with_dlqs(), partitions=4)
    start = (time.time() // seconds - 80) * seconds
    market = SyntheticMarket(settings.symbols, seed=7, start_ts=start, candle_seconds=seconds)
    trades = list(market.candles_of_trades(60))
    group = f"features-{tag}"
    want_features, want_examples = expected_outputs(settings, trades)
    half = len(trades) // 2
    first_examples = expected_outputs(settings, trades[:half])[1]
    stalled = _pipeline(settings, group)
    other: subprocess.Popen[bytes] | None = None
    try:
        _feed(settings, trades[:half], chunks=10, pause_s=0.2).join(60)
        _wait_for(settings, first_examples, timeout=120)
        time.sleep(1)  # what it sent is delivered
        stalled.send_signal(signal.SIGSTOP)
        other = _pipeline(settings, group)
        _feed(settings, trades[half:], chunks=10, pause_s=0.2).join(60)
        # past its session (3 s) and two candles of silence (10 s)
        time.sleep(3 * seconds + 5)
        stalled.send_signal(signal.SIGCONT)
        _wait_for(settings, want_examples, timeout=240)
        time.sleep(3 * COMMIT_S)  # a late write of the woken one would be there by now
    finally:
        stalled.send_signal(signal.SIGCONT)
        for proc in (stalled, other):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    _assert_each_output_once(settings, want_features, want_examples)
    _assert_stored_once(settings, want_features)
