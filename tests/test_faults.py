"""Faults on the real embedded stack: a broker that forgets, a Redis that blinks, an MLflow
server that goes away, poison records, SIGTERM. Each test says what rtml must do about it.

SIGKILL at random points, divergence and rollback live in test_trainer.py, the predictor's
Redis outage in test_predictor.py and SIGTERM of every service in test_demo.py; the README's
fault table lists them all.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Imported here, once: feast's circular imports fail when two threads first import it at once,
# as the components these tests run in threads would.
import feast.data_source  # noqa: F401
import pandas as pd
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from rtml import checkpoints, registry
from rtml import feature_store as fs
from rtml.app.processes import KAFKA, MLFLOW, free_port
from rtml.app.stack import Stack
from rtml.kafka import (
    Topics,
    dlq,
    encode,
    ensure_topics,
    make_consumer,
    make_producer,
    read_topic,
)
from rtml.pipelines.features.feature_pipeline import FeaturePipeline
from rtml.pipelines.features.feed import backfill, publish
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.pipelines.training.trainer import Trainer
from rtml.records import Trade
from rtml.serving.app import create_app
from rtml.serving.model_holder import ModelHolder
from rtml.serving.stream import StreamingPredictor
from rtml.settings import Settings
from tests.kafka_helpers import drain, features
from tests.test_predictor import _redis
from tests.test_trainer import _env, _history_and_stream, _produce, _shard

pytestmark = [pytest.mark.integration, pytest.mark.faults]

START = 1_700_000_040.0


def _until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what if isinstance(what, str) else what()}"
            )
        time.sleep(0.1)


class _Worker(threading.Thread):
    """Runs a loop in a thread and keeps what it raised, so a crash fails the test."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _emitted(trades: list[Trade], settings: Settings, after: float, before: float) -> int:
    """How many examples labelled after `after` the trades before `before` emit, replayed
    from the start as the pipeline does (the newest candle stays open)."""
    processor = FeatureProcessor(
        settings.candle_seconds, settings.allowed_lateness_s, settings.horizon
    )
    return sum(
        1
        for trade in trades
        if trade.ts < before
        for ex in processor.on_trade(trade).examples
        if ex.label_ts > after
    )


# --- the broker keeps nothing across a restart ---------------------------------------------


@pytest.fixture
def own_broker(stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    """A broker of its own, so restarting it touches no other test; Redis and MLflow shared."""
    own = Stack(
        Settings(
            state_dir=tmp_path,
            kafka_port=free_port(),
            redis_url=stack.settings.redis,
            mlflow_tracking_uri=stack.settings.mlflow_uri,
            feature_repo=stack.settings.feature_repo,
            up_timeout_s=120,
        ),
        repick_ports=True,
    )
    own.up()
    try:
        yield own
    finally:
        own.down()


def _learned(trainer: Trainer, n: int) -> Callable[[], bool]:
    return lambda: trainer.learner is not None and trainer.learner.learned == n


def _send(producer: Producer, topic: str, trades: list[Trade]) -> None:
    publish(producer, topic, trades)
    producer.flush(10)


def _restart_broker(own: Stack, pipeline: FeaturePipeline) -> None:
    """The broker restarts empty: topics, records and committed offsets are gone."""
    before = pipeline.stats.topics_recreated
    own.stop_service(KAFKA)
    own.start_service(KAFKA)
    _until(lambda: pipeline.stats.topics_recreated > before, 30, "the pipeline to re-create topics")


@pytest.mark.slow
def test_broker_restart_is_survived_and_the_trainer_catches_up_from_the_offline_store(
    own_broker: Stack,
) -> None:
    own = own_broker
    local = _shard(own.settings, checkpoint_every=50, checkpoint_interval_s=0.5)
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    history, phase = 60, 30  # candles
    market = SyntheticMarket(local.symbols, seed=5, start_ts=START)
    trades = list(market.candles_of_trades(history + 4 * phase))
    cuts = [START + (history + k * phase) * 60 for k in range(5)]
    parts = [[t for t in trades if a <= t.ts < b] for a, b in itertools.pairwise(cuts)]
    warm = backfill(local, [t for t in trades if t.ts < cuts[0]], write_online=False).examples
    # examples emitted once each phase's trades are in
    emitted = [_emitted(trades, local, cuts[0], b) for b in cuts[1:]]
    counts = [emitted[0], *(b - a for a, b in itertools.pairwise(emitted))]

    pipeline = FeaturePipeline(local, group_id="features", commit_interval_s=0.5)
    features = _Worker(lambda: pipeline.run(max_seconds=300))
    features.start()
    feed = make_producer(local)
    second = Trainer(local)

    def status(trainer: Trainer = second) -> str:
        learned = trainer.learner.learned if trainer.learner else None
        return (
            f"{learned} learned of {warm}+{counts}, caught up {trainer.caught_up}, offsets "
            f"{trainer.offsets}, pipeline: {pipeline.stats.line()}, alive {features.is_alive()}, "
            f"errors {features.error!r} {trainer.stop.is_set()}"
        )

    # 1. the trainer learns phase 1 from Kafka and stops with a checkpoint
    first = Trainer(local)
    run_first = _Worker(lambda: first.run(max_seconds=120))
    run_first.start()
    _send(feed, topics.trades, parts[0])
    _until(_learned(first, warm + counts[0]), 90, lambda: f"phase 1: {status(first)}")
    first.stop.set()
    run_first.join(60)
    assert run_first.error is None

    # 2. phase 2 reaches `examples` and the offline store, but no trainer reads it
    _send(feed, topics.trades, parts[1])
    _until(lambda: pipeline.stats.examples >= sum(counts[:2]), 60, "phase 2 emitted")
    time.sleep(1.5)  # a commit: the offline parts are durable

    # 3. the broker restarts; the pipeline re-creates every topic as it was
    _restart_broker(own, pipeline)
    metadata = make_consumer(local, "probe").list_topics(timeout=10).topics
    assert set(topics.with_dlqs()) <= set(metadata)
    assert len(metadata[topics.examples].partitions) == local.kafka_partitions

    # 4. the feed reconnects; a new trainer resumes from a checkpoint whose offsets point
    # into a topic that no longer exists: it catches up on phase 2 from the offline store
    _send(feed, topics.trades, parts[2])
    run_second = _Worker(lambda: second.run(max_seconds=180))
    run_second.start()
    _until(_learned(second, warm + sum(counts[:3])), 90, lambda: f"phase 3: {status()}")
    assert second.caught_up == counts[1]

    # 5. the broker restarts under the running trainer: it notices and reads the new topic
    _restart_broker(own, pipeline)
    _send(feed, topics.trades, parts[3])
    total = warm + sum(counts)
    _until(_learned(second, total), 90, lambda: f"phase 4: {status()}")
    second.stop.set()
    run_second.join(60)
    pipeline.stop.set()
    features.join(60)
    assert run_second.error is None and features.error is None
    assert second.learner is not None and second.learner.learned == total  # none lost
    assert pipeline.stats.examples == sum(counts)  # the pipeline lost no trade it was sent


def _read_at_least(pipeline: FeaturePipeline, n: int) -> bool:
    return pipeline.stats.trades >= n


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_broker_restarts_while_trades_flow_leave_one_real_candle_per_window(
    own_broker: Stack,
) -> None:
    """The broker restarts three times while a market arrives, each time right after the
    pipeline read the trades sent (its newest candles still buffered for the offline store,
    its newest windows open). The store then holds each (symbol, window) once, and no flat
    candle stands where trades were: buffered candles are written before the symbols resume,
    and open windows resume as they were (the forgotten topic cannot replay them)."""
    own = own_broker
    tag = uuid.uuid4().hex[:6]
    local = own.settings.model_copy(
        update={"symbols": (f"A{tag}", f"B{tag}"), "horizon": 3, "topic_prefix": f"br{tag}."}
    )
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    start = (time.time() // 60 - 100) * 60
    trades = list(SyntheticMarket(local.symbols, seed=9, start_ts=start).candles_of_trades(80))
    cuts = [start + k * 20 * 60 for k in range(5)]
    parts = [[t for t in trades if a <= t.ts < b] for a, b in itertools.pairwise(cuts)]
    pipeline = FeaturePipeline(local, group_id=f"restarts-{tag}", commit_interval_s=0.5)
    worker = _Worker(lambda: pipeline.run(max_seconds=420))
    worker.start()
    feed = make_producer(local)
    sent = 0
    for i, part in enumerate(parts):
        _send(feed, topics.trades, part)
        sent += len(part)
        _until(functools.partial(_read_at_least, pipeline, sent), 120, pipeline.stats.line)
        if i < 3:
            _restart_broker(own, pipeline)
    time.sleep(2)  # a commit: the offline parts are durable
    pipeline.stop.set()
    worker.join(60)
    assert worker.error is None

    frame = fs.read_parquet_dir(local.offline_dir / fs.CANDLES_DATASET)
    frame = frame[frame["symbol"].isin(local.symbols)]
    ends = (frame["event_timestamp"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    stored = Counter(zip(frame["symbol"], ends, strict=True))
    assert [k for k, n in stored.items() if n > 1] == []
    traded = {(t.symbol, (t.ts // 60 + 1) * 60) for t in trades}
    flat = set(zip(frame["symbol"][frame["trades"] == 0], ends[frame["trades"] == 0], strict=True))
    assert flat & traded == set(), sorted(flat & traded)
    newest = max(ends)
    assert {k for k in traded if k[1] < newest - 60} <= set(stored)


# --- Redis blinks under the feature pipeline -----------------------------------------------


REDIS_OUTAGE_S = 30.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_feature_pipeline_waits_out_a_30s_redis_outage_in_its_group_and_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    redis = _redis(port, tmp_path)
    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={"redis_port": port, "topic_prefix": f"rd{tag}.", "symbols": (f"R{tag}",)}
    )
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    now = (time.time() // 60 - 60) * 60
    trades = list(SyntheticMarket(local.symbols, seed=2, start_ts=now).candles_of_trades(50))
    half = len(trades) // 2
    pipeline = FeaturePipeline(local, group_id=f"rd{tag}", commit_interval_s=0.5)
    worker = _Worker(lambda: pipeline.run(max_seconds=120))
    worker.start()
    try:
        feed = make_producer(local)
        publish(feed, topics.trades, trades[:half])
        feed.flush(10)
        _until(lambda: pipeline.stats.features > 0, 60, "the first features")
        redis.terminate()
        redis.wait(10)
        features_before = pipeline.stats.features
        publish(feed, topics.trades, trades[half:])
        feed.flush(10)
        # writes fail and back off; the loop waits on the write, three times as long as the
        # group lets a member go without polling (RTML_KAFKA_MAX_POLL_INTERVAL_MS)
        time.sleep(REDIS_OUTAGE_S)
        assert worker.is_alive() and worker.error is None  # waiting on Redis, not crashed
        assert pipeline.stats.features <= features_before + 1  # the loop waits on the write
        assert pipeline.assignments == 1  # it kept its partitions: no rebalance
        redis = _redis(port, tmp_path)
        _until(lambda: pipeline.stats.trades == len(trades), 60, "every trade after recovery")
        time.sleep(1.0)
        pipeline.stop.set()
        worker.join(60)
        assert worker.error is None
        assert pipeline.assignments == 1
        assert not pipeline.stats.rejected  # no valid trade dead-lettered for the outage
        examples = read_topic(local, topics.examples)
        assert len(examples) == pipeline.stats.examples > 0
        assert len({(e["symbol"], e["ts"]) for e in examples}) == len(examples)

        # the online store holds the newest closed candle's features
        processor = FeatureProcessor(60, 0, local.horizon)
        newest = [row for t in trades for row in processor.on_trade(t).features][-1]
        store = fs.open_store(local)
        online = fs.online_features(store, [newest.symbol])
        for name in ("ret_1", "ret_5", "vol_15", "rsi_14"):
            got = online[name][0]
            assert math.isclose(got, newest.values[name], rel_tol=1e-6, abs_tol=1e-12), name
    finally:
        pipeline.stop.set()
        redis.terminate()
        redis.wait(10)


# --- MLflow goes away for 30 s ---------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_down_30s_trainer_keeps_learning_and_uploads_when_it_returns(
    stack: Stack, settings: Settings
) -> None:
    local = _shard(settings, checkpoint_every=25, checkpoint_interval_s=0.5, checkpoint_queue=3)
    ensure_topics(local, Topics.of(local).with_dlqs())
    warm, records = _history_and_stream(local)
    total = warm + len(records)
    trainer = Trainer(local)
    worker = _Worker(lambda: trainer.run(max_seconds=240))
    worker.start()
    _until(lambda: registry.alias_version(local, registry.CANDIDATE) is not None, 90, "v1")
    first = registry.alias_version(local, registry.CANDIDATE)
    assert first is not None
    registry.promote(local, first)  # served from the start, whatever the gate said
    holder = ModelHolder(local.model_copy(update={"model_poll_s": 0.5}))
    holder.refresh()
    holder.start()
    client = TestClient(create_app(local, holder, fs.open_store(local)))
    row = {"rows": [{"ret_1": 0.001, "vol_15": 0.002}]}
    try:
        stack.stop_service(MLFLOW)
        down_at = time.monotonic()
        _produce(local, records)
        _until(
            lambda: trainer.learner is not None and trainer.learner.learned == total,
            25,
            "the trainer to learn while MLflow is down",
        )
        assert trainer.uploader is not None and trainer.uploader.queue.qsize() <= 3
        served = client.post("/predict", json=row)
        assert served.status_code == 200 and served.json()["model_version"] == first
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        assert holder.load_failures > 0  # the alias polls failed, were counted, went on
        assert client.post("/predict", json=row).json()["model_version"] == first
        stack.start_service(MLFLOW)

        def uploaded_all() -> bool:
            return checkpoints.learned(local) == total

        _until(uploaded_all, 60, "the newest checkpoint to be uploaded")
        assert client.post("/predict", json=row).status_code == 200
    finally:
        if not stack.healthy(MLFLOW):
            stack.start_service(MLFLOW)
        trainer.stop.set()
        worker.join(90)
        holder.stop()
    assert worker.error is None
    restored = checkpoints.latest_checkpoint(local)
    assert restored is not None and restored.learner.learned == total


# --- poison records on every topic a component consumes --------------------------------------


def _example(symbol: str, ts: float) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "ts": ts,
        "label_ts": ts + 300,
        "features": features(ret_1=0.001),
        "target": 0.002,
    }


POISON_EXAMPLES: list[tuple[str, bytes]] = [
    ("not_json", b"{nope"),
    # read in its order: the target overflows a float before the missing fields are counted
    ("out_of_range", b'{"symbol": "X", "target": 1e999}'),
    # cheap records that once crash-looped the trainer: bounded before they are parsed
    ("out_of_range", b'{"symbol": "X", "ts": 1' + b"0" * 400 + b"}"),
    ("too_deep", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    ("too_large", b'"' * 600_000),
    ("missing_field", json.dumps({"symbol": "X", "ts": 1.0}).encode()),
    ("wrong_type", json.dumps({**_example("X", 1.0), "target": "up"}).encode()),
    ("leak", json.dumps({**_example("X", 1.0), "label_ts": 0.5}).encode()),
]

POISON_FEATURES: dict[str, bytes] = {
    "not_json": b"[1, 2",
    "missing_field": json.dumps({"symbol": "X", "ts": 1.0}).encode(),
    "wrong_type": json.dumps({"symbol": 7, "ts": 1.0, "features": {}}).encode(),
    "not_finite": b'{"symbol": "X", "ts": Infinity, "features": {}}',
    "out_of_range": b'{"symbol": "X", "ts": 1' + b"0" * 400 + b', "features": {}}',
    "too_deep": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "too_large": b'"' * 600_000,
    "unknown_symbol": json.dumps(
        {"symbol": "NOT/CONFIGURED", "ts": START, "features": features(ret_1=0.0)}
    ).encode(),
}


def _dlq_reasons(settings: Settings, topic: str) -> list[str]:
    return [r["reason"] for r in drain(settings, dlq(topic))]


def test_poison_examples_reach_the_trainers_dlq_with_their_reasons(settings: Settings) -> None:
    local = _shard(settings)
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    good = [encode(_example(local.symbols[0], START + 60 * i)) for i in range(30)]
    producer = make_producer(local)
    cases = [
        *POISON_EXAMPLES,
        ("unknown_symbol", encode(_example("NOT/CONFIGURED", START))),
        # an example from the year 2283 must not make every later one "seen before"
        ("future", encode(_example(local.symbols[0], 9.9e9))),
        # a label a horizon after its features, no sooner and not days later
        ("leak", encode({**_example(local.symbols[0], START + 600), "label_ts": START + 660})),
        ("stale", encode({**_example(local.symbols[0], START + 600), "ts": 1.0})),
    ]
    poison = [value for _, value in cases]
    for value in [*good[:15], *poison, *good[15:]]:
        producer.produce(topics.examples, key=b"k", value=value)
    producer.flush(10)
    trainer = Trainer(local)
    learner = trainer.run(max_seconds=60, max_examples=len(good))
    assert learner.learned == len(good)
    expected = Counter(kind for kind, _ in cases)
    assert trainer.rejected == expected
    assert learner.watermark < 9.9e9  # trained_through is not dragged into the future
    reasons = _dlq_reasons(local, topics.examples)
    assert Counter(r.partition(":")[0] for r in reasons) == expected, reasons


def test_poison_features_reach_the_predictors_dlq_with_their_reasons(settings: Settings) -> None:
    local = _shard(settings)
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    warm, _ = _history_and_stream(local)
    assert warm > 0
    Trainer(local).run(max_seconds=2)  # registers the warm-started model
    version = registry.alias_version(local, registry.CANDIDATE)
    assert version is not None
    registry.promote(local, version)
    good = [
        encode(
            {"symbol": local.symbols[i % 2], "ts": START + 60 * i, "features": features(ret_1=0.0)}
        )
        for i in range(20)
    ]
    # a features record from the year 2283 must not become the symbol's newest
    poison = {
        **POISON_FEATURES,
        "future": encode(
            {"symbol": local.symbols[0], "ts": 9.9e9, "features": features(ret_1=0.0)}
        ),
    }
    producer = make_producer(local)
    for value in [*good[:10], *poison.values(), *good[10:]]:
        producer.produce(topics.features, key=b"k", value=value)
    producer.flush(10)
    holder = ModelHolder(local)
    holder.refresh()
    predictor = StreamingPredictor(local, holder, group_id=f"poison-{uuid.uuid4().hex[:6]}")
    worker = _Worker(lambda: predictor.run(max_seconds=60))
    worker.start()
    expected = len(good) + len(poison)
    _until(lambda: predictor.predicted + predictor.rejected >= expected, 60, "every record")
    predictor.stop.set()
    worker.join(30)
    assert worker.error is None
    assert predictor.predicted == len(good)
    assert dict(predictor.rejected_by) == dict.fromkeys(poison, 1)
    reasons = _dlq_reasons(local, topics.features)
    for kind in poison:
        assert sum(r.startswith(f"{kind}:") for r in reasons) == 1, (kind, reasons)
    assert len(drain(local, topics.predictions)) == len(good)


# --- SIGTERM: finish in-flight work, checkpoint, exit 0 ----------------------------------------


def test_sigterm_makes_the_trainer_checkpoint_what_it_learned_and_exit_0(
    settings: Settings,
) -> None:
    local = _shard(settings, checkpoint_every=10_000, checkpoint_interval_s=3600.0)
    topics = Topics.of(local)
    ensure_topics(local, [topics.examples], partitions=1)
    ensure_topics(local, topics.with_dlqs())
    warm, records = _history_and_stream(local)
    proc = subprocess.Popen([sys.executable, "-m", "rtml.app.cli", "train"], env=_env(local))
    try:
        _until(lambda: registry.alias_version(local, registry.CANDIDATE) is not None, 90, "v1")
        _produce(local, records)
        time.sleep(1.0)  # mid-stream: no checkpoint is due for an hour or 10,000 examples
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    restored = checkpoints.latest_checkpoint(local)
    assert restored is not None
    # the last checkpoint holds what was learned together with the offset after it
    assert restored.offsets.get(0, 0) > 0
    assert restored.learner.learned == warm + restored.offsets[0]


# --- security defaults ---------------------------------------------------------------------


def test_services_bind_loopback_and_limit_requests_by_default() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.bind_host == defaults.api_host == defaults.monitor_host == "127.0.0.1"
    assert defaults.api_token is None  # optional; enforced when set (test_predictor)
    assert 0 < defaults.max_body_bytes <= 10_000_000 and 0 < defaults.max_batch_rows <= 10_000
    argv = Stack(defaults).command(MLFLOW)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--allowed-hosts" in argv
    redis = Stack(defaults).command("redis")
    assert redis[redis.index("--bind") + 1] == "127.0.0.1"
    assert redis[redis.index("--protected-mode") + 1] == "yes"
    kafka = Stack(defaults).command(KAFKA)
    assert kafka[kafka.index("--listener-url") + 1].startswith("tcp://127.0.0.1:")
