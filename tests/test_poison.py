"""Hostile records on every topic while the whole loop runs: the feature pipeline, the trainer and
the streaming predictor side by side, each with its metrics port.

Each record lands in its topic's DLQ once with its class, no component stops, the counters on
the metrics ports show every one, and the other symbols' features, learning and predictions are
what a run without poison gives.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

# Imported here, once: feast's circular imports fail when two threads first import it at once
import feast.data_source  # noqa: F401
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtml.kafka import Topics, dlq, ensure_topics, make_producer, read_messages
from rtml.pipelines.features.feature_pipeline import FeaturePipeline
from rtml.pipelines.features.feed import publish
from rtml.pipelines.features.indicators import (
    FEATURE_BOUNDS,
    FEATURE_NAMES,
    TARGET_BOUNDS,
    out_of_bounds,
)
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.pipelines.training.learner import Learner
from rtml.pipelines.training.models import build_model
from rtml.pipelines.training.trainer import Trainer
from rtml.records import BadRecord, Example, examples_reader, features_reader
from rtml.serving.model_holder import ModelHolder
from rtml.serving.stream import StreamingPredictor
from rtml.settings import Settings
from tests.kafka_helpers import features
from tests.test_faults import _until, _Worker

pytestmark = pytest.mark.integration

H = 3
CANDLES = 40
YEAR_2286 = 9.9e9

# cheap records that once crash-looped a consumer, the same on every topic
HOSTILE: list[tuple[str, bytes]] = [
    ("out_of_range", b'{"symbol": "X", "ts": 1' + b"0" * 400 + b"}"),
    ("not_json", b"[" * 5_000 + b"]" * 5_000),  # no object: refused before any depth counts
    ("too_deep", b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"),
    ("too_large", b"[" * 50_000 + b"]" * 50_000),  # nested 50,000 deep, refused by its size
    ("too_large", b'"' * 600_000),
    ("too_large", b"x" * 1_100_000),
    ("not_json", b"{nope"),
]


def _trade_poison(symbol: str, start: float, last: dict[str, Any]) -> list[tuple[str, bytes]]:
    def trade(**update: Any) -> bytes:
        return json.dumps({**last, "trade_id": f"p{uuid.uuid4().hex[:6]}", **update}).encode()

    return [
        *HOSTILE,
        ("unknown_symbol", trade(symbol="NOT/CONFIGURED")),
        ("future", trade(ts=YEAR_2286)),
        ("late", trade(ts=start + 1)),
        ("duplicate", json.dumps(last).encode()),
        ("missing_field", json.dumps({"symbol": symbol, "price": 1.0}).encode()),
        ("wrong_type", trade(side="hold")),
        ("not_finite", trade(price=math.nan)),  # json.dumps writes NaN
        ("non_positive", trade(size=-2)),  # zero is a price without volume
        ("out_of_range", trade(trade_id="i" * 60_000)),  # remembered 50,000 times a symbol
        ("wrong_type", trade(ts=True)),  # a JSON boolean is not a time (1970)
        ("out_of_range", trade(price=1e25)),  # a fat finger: it would reshape the model
    ]


def _example_poison(symbol: str, ts: float) -> list[tuple[str, bytes]]:
    good = {"symbol": symbol, "ts": ts, "label_ts": ts + 180, "features": features(), "target": 0.0}
    return [
        *HOSTILE,
        ("unknown_symbol", json.dumps({**good, "symbol": "NOT/CONFIGURED"}).encode()),
        ("future", json.dumps({**good, "label_ts": YEAR_2286}).encode()),
        ("leak", json.dumps({**good, "label_ts": ts - 60}).encode()),
        ("leak", json.dumps({**good, "label_ts": ts + 60}).encode()),  # sooner than H candles
        ("stale", json.dumps({**good, "ts": 1.0}).encode()),  # features from 1970
        ("missing_field", json.dumps({"symbol": symbol, "ts": ts}).encode()),
        ("wrong_type", json.dumps({**good, "target": "up"}).encode()),
        ("not_finite", json.dumps({**good, "target": math.inf}).encode()),
        ("out_of_range", json.dumps({**good, "target": 1e20}).encode()),
        ("out_of_range", json.dumps({**good, "features": features(ret_1=-3.0)}).encode()),
    ]


def _features_poison(symbol: str, ts: float) -> list[tuple[str, bytes]]:
    good = {"symbol": symbol, "ts": ts, "features": features(ret_1=0.0)}
    return [
        *HOSTILE,
        ("unknown_symbol", json.dumps({**good, "symbol": "NOT/CONFIGURED"}).encode()),
        ("future", json.dumps({**good, "ts": YEAR_2286}).encode()),
        ("missing_field", json.dumps({"symbol": symbol}).encode()),
        ("wrong_type", json.dumps({**good, "symbol": 7}).encode()),
        ("not_finite", json.dumps({**good, "ts": math.nan}).encode()),
        ("out_of_range", json.dumps({**good, "features": features(ret_1=1e20)}).encode()),
    ]


def _rejected_on(port: int | None, component: str) -> Counter[str]:
    """Rejections by class, as the component's metrics port reports them."""
    assert port is not None, f"{component} serves no metrics"
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rtml_records_rejected_total":
                assert sample.labels["component"] == component
                out[sample.labels["reason"]] += int(sample.value)
    return out


def _dlq_kinds(settings: Settings, topic: str) -> Counter[str]:
    return Counter(
        json.loads(value)["reason"].partition(":")[0]
        for _, value in read_messages(settings, dlq(topic))
    )


def _valid(settings: Settings, topic: str, parse: Callable[[bytes], Any]) -> list[Any]:
    """The records of `topic` that rtml sent (parse, configured symbol, not from 2286, and an
    example's label a horizon after its features)."""
    out = []
    least = settings.horizon * settings.candle_seconds
    span = (least, least if settings.gap_policy == "flat" else math.inf)
    for _, value in read_messages(settings, topic):
        try:
            record = parse(value)
        except BadRecord:
            continue
        label_ts = getattr(record, "label_ts", None)
        if label_ts is not None and not span[0] <= label_ts - record.ts <= span[1]:
            continue
        newest = max(record.ts, label_ts or 0)
        values = getattr(record, "features", None) or getattr(record, "values", {})
        if out_of_bounds(values, getattr(record, "target", None)) is not None:
            continue
        if record.symbol in settings.symbols and newest < YEAR_2286:
            out.append(record)
    return out


def test_hostile_records_on_every_topic_each_land_in_a_dlq_once_and_bend_nothing(
    settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={
            "topic_prefix": f"poison{tag}.",
            "symbols": (f"A{tag}", f"B{tag}"),
            "horizon": H,
            "model_name": f"poison-{tag}",
            "metrics_port": 0,
            "checkpoint_every": 20,
            "checkpoint_interval_s": 1.0,
            "checkpoint_min_interval_s": 0.0,
            "register_interval_s": 0.0,
            "warm_start_epochs": 1,
        }
    )
    topics = Topics.of(local)
    # one partition each: the order the trainer learns in is the order the topic holds
    ensure_topics(local, topics.with_dlqs(), partitions=1)
    start = (time.time() // 60 - CANDLES - 5) * 60
    trades = list(SyntheticMarket(local.symbols, seed=4, start_ts=start).candles_of_trades(CANDLES))
    half = len(trades) // 2
    symbol = local.symbols[0]
    last = next(t for t in reversed(trades[:half]) if t.symbol == symbol).to_json()
    poison = {
        topics.trades: _trade_poison(symbol, start, last),
        topics.examples: _example_poison(symbol, start + 600),
        topics.features: _features_poison(symbol, start + 600),
    }

    trainer = Trainer(local, group_id=f"trainer-{tag}")
    holder = ModelHolder(local)
    holder.refresh()  # no champion yet: the naive baseline serves
    holder.start()
    predictor = StreamingPredictor(local, holder, group_id=f"predictor-{tag}")
    pipeline = FeaturePipeline(local, group_id=f"features-{tag}", commit_interval_s=1.0)
    workers = {
        "trainer": _Worker(lambda: trainer.run(max_seconds=300)),
        "predict-stream": _Worker(lambda: predictor.run(max_seconds=300)),
        "features": _Worker(lambda: pipeline.run(max_seconds=300)),
    }
    try:
        workers["trainer"].start()
        # the trainer starts from nothing (its symbols have no history), before any example
        _until(lambda: trainer.metrics_port is not None, 120, lambda: "the trainer to start")
        workers["predict-stream"].start()
        workers["features"].start()
        producer = make_producer(local, **{"message.max.bytes": 2_000_000})
        publish(producer, topics.trades, trades[:half])
        for topic, records in poison.items():
            for _, value in records:
                producer.produce(topic, key=symbol.encode(), value=value)
        publish(producer, topics.trades, trades[half:])
        producer.flush(30)

        clean_features, clean_examples = _clean_run(local, trades)
        expected = {t: Counter(kind for kind, _ in records) for t, records in poison.items()}

        def progress() -> str:
            return (
                f"pipeline {pipeline.stats.line()}; trainer learned "
                f"{trainer.learner.learned if trainer.learner else 0} {trainer.counters.line()}; "
                f"predictor {predictor.counters.line()}"
            )

        _until(
            lambda: (
                pipeline.stats.trades >= len(trades) + len(poison[topics.trades])
                and trainer.learner is not None
                and trainer.learner.learned >= len(clean_examples)
                and predictor.predicted >= len(clean_features)
                and sum(trainer.rejected.values()) >= len(poison[topics.examples])
                and predictor.rejected >= len(poison[topics.features])
            ),
            180,
            progress,
        )
        time.sleep(1.5)  # a commit interval: what the loops hold is committed
        dead = {name: w for name, w in workers.items() if not w.is_alive()}
        assert not dead, {name: w.error for name, w in dead.items()}  # nothing stopped

        # counters on the metrics ports show every one
        assert _rejected_on(pipeline.metrics_port, "features") == expected[topics.trades]
        assert _rejected_on(trainer.metrics_port, "trainer") == expected[topics.examples]
        assert _rejected_on(predictor.metrics_port, "predict-stream") == expected[topics.features]
    finally:
        trainer.stop.set()
        predictor.stop.set()
        pipeline.stop.set()
        for worker in workers.values():
            if worker.is_alive():
                worker.join(60)
        holder.stop()
    for name, worker in workers.items():
        assert worker.error is None, (name, worker.error)

    # each in its DLQ once, with its class; nothing else there
    for topic, kinds in expected.items():
        assert _dlq_kinds(local, topic) == kinds, topic
    _assert_unbent(local, clean_features, clean_examples, trainer)


def _clean_run(
    settings: Settings, trades: list[Any]
) -> tuple[dict[tuple[str, float], dict[str, float]], list[Example]]:
    """What a run without poison emits: the same processor over the same trades."""
    processor = FeatureProcessor(settings.candle_seconds, settings.allowed_lateness_s, H)
    features: dict[tuple[str, float], dict[str, float]] = {}
    examples: list[Example] = []
    for trade in trades:
        out = processor.on_trade(trade)
        features |= {(r.symbol, r.ts): r.values for r in out.features}
        examples += out.examples
    return features, examples


def _assert_unbent(
    local: Settings,
    clean_features: dict[tuple[str, float], dict[str, float]],
    clean_examples: list[Example],
    trainer: Trainer,
) -> None:
    """Features, learning and predictions are what a run without poison gives."""
    topics = Topics.of(local)
    # features: each row once, with the values of a run without poison
    features = _valid(local, topics.features, features_reader(FEATURE_NAMES, FEATURE_BOUNDS).read)
    got = Counter((r.symbol, r.ts) for r in features)
    assert [k for k, n in got.items() if n > 1] == []
    assert set(clean_features) <= set(got)
    assert len(set(got) - set(clean_features)) <= len(local.symbols)  # a last idle window
    for row in features:
        if (row.symbol, row.ts) in clean_features:
            clean = clean_features[row.symbol, row.ts]
            assert row.values == {n: clean[n] for n in FEATURE_NAMES}  # what the model reads

    # learning: what a trainer learns from the clean examples in the topic's order
    reader = examples_reader(FEATURE_NAMES, FEATURE_BOUNDS, TARGET_BOUNDS)
    examples: list[Example] = _valid(local, topics.examples, reader.read)
    assert {(e.symbol, e.ts) for e in clean_examples} <= {(e.symbol, e.ts) for e in examples}
    reference = Learner(
        build_model(local.model, local.model_params, local.target),
        window=local.metrics_window,
        drift_delta=local.drift_delta,
    )
    for example in examples:
        reference.step(example)
    assert trainer.learner is not None
    assert trainer.learner.learned == reference.learned == len(examples)
    assert trainer.learner.metrics() == reference.metrics()
    assert trainer.learner.watermark < YEAR_2286

    # predictions: each valid features row once, nothing for the poison
    predicted = Counter(
        (p["symbol"], p["ts"]) for p in map(json.loads, _values(local, topics.predictions))
    )
    assert predicted == Counter((r.symbol, r.ts) for r in features)


def _values(settings: Settings, topic: str) -> list[bytes]:
    return [value for _, value in read_messages(settings, topic)]
