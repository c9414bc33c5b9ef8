"""Synthetic trades through the real feature pipeline into Feast and Kafka."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pandas as pd
import pytest

from rtml import feature_store as fs
from rtml.kafka import Topics, ensure_topics, make_producer
from rtml.pipelines.features.feature_pipeline import FeaturePipeline
from rtml.pipelines.features.feed import publish
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.settings import Settings
from tests.kafka_helpers import drain

pytestmark = pytest.mark.integration

CANDLES = 40
H = 5


@pytest.fixture(scope="module")
def run(stack_settings: Settings, stack: object) -> dict[str, Any]:
    """One pipeline run over a synthetic market plus one poison record of every class."""
    tag = uuid.uuid4().hex[:6]
    settings = stack_settings.model_copy(
        update={"topic_prefix": f"t{tag}.", "symbols": (f"A{tag}", f"B{tag}"), "horizon": H}
    )
    topics = Topics.of(settings)
    ensure_topics(settings, topics.with_dlqs())
    start = (time.time() // 60 - CANDLES - 5) * 60
    trades = list(
        SyntheticMarket(settings.symbols, seed=1, start_ts=start).candles_of_trades(CANDLES)
    )
    producer = make_producer(settings)
    publish(producer, topics.trades, trades[: len(trades) // 2])
    good = trades[0].to_json()
    first_half = [t for t in trades[: len(trades) // 2] if t.symbol == good["symbol"]]
    other = next(t for t in trades[len(trades) // 2 :] if t.symbol != good["symbol"])
    poison = {
        "not_json": b"{oops",
        "missing_field": json.dumps({k: v for k, v in good.items() if k != "size"}).encode(),
        "wrong_type": json.dumps({**good, "trade_id": "w", "price": "cheap"}).encode(),
        "not_finite": json.dumps({**good, "trade_id": "n", "price": float("nan")}).encode(),
        "non_positive": json.dumps({**good, "trade_id": "z", "size": -2}).encode(),
        "duplicate": json.dumps(first_half[-1].to_json()).encode(),
        # another symbol's trade on good's partition: it could overtake its own partition
        "misrouted": json.dumps({**other.to_json(), "trade_id": "m"}).encode(),
        # cheap records that once crash-looped the pipeline
        "out_of_range": json.dumps({**good, "trade_id": "o"})
        .replace(json.dumps(good["price"]), "1" + "0" * 400, 1)
        .encode(),
        "too_deep": b'{"a":' * 5000 + b"1" + b"}" * 5000,
        "too_large": b'"' * 600_000,
        # valid-looking trades that once bent the pipeline's state
        "unknown_symbol": json.dumps(
            {**good, "trade_id": "u", "symbol": "NOT/CONFIGURED"}
        ).encode(),
        "future": json.dumps({**good, "trade_id": "f", "ts": 9.9e9}).encode(),  # year 2283
    }
    for value in poison.values():
        producer.produce(topics.trades, key=good["symbol"].encode(), value=value)
    publish(producer, topics.trades, trades[len(trades) // 2 :])
    late = {**good, "trade_id": "late", "ts": start + 1}
    producer.produce(topics.trades, key=good["symbol"].encode(), value=json.dumps(late).encode())
    producer.flush(10)

    pipeline = FeaturePipeline(settings, group_id=f"features-{tag}", commit_interval_s=0.5)
    # every candle but the last closes; examples need H more candles after warm-up
    expected_examples = 2 * (CANDLES - 1 - 15 - H)
    thread = threading.Thread(target=pipeline.run, kwargs={"max_seconds": 120})
    thread.start()
    deadline = time.monotonic() + 120
    while pipeline.stats.examples < expected_examples and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # let the last batch commit
    pipeline.stop.set()
    thread.join(30)
    return {
        "settings": settings,
        "pipeline": pipeline,
        "trades": trades,
        "poison": poison,
        "expected_examples": expected_examples,
    }


def test_pipeline_counts_every_trade_and_emits_examples(run: dict[str, Any]) -> None:
    pipeline: FeaturePipeline = run["pipeline"]
    settings: Settings = run["settings"]
    assert pipeline.stats.trades == len(run["trades"]) + len(run["poison"]) + 1
    assert pipeline.stats.examples == run["expected_examples"]
    topics = Topics.of(settings)
    examples = drain(settings, topics.examples)
    assert len(examples) == run["expected_examples"]
    for ex in examples:
        assert ex["label_ts"] == ex["ts"] + H * 60
    features = drain(settings, topics.features)
    assert len(features) == pipeline.stats.features == 2 * (CANDLES - 1 - 15)


def test_each_bad_input_class_lands_in_the_dlq_with_its_reason(run: dict[str, Any]) -> None:
    settings: Settings = run["settings"]
    dead = drain(settings, Topics.of(settings).trades + ".dlq")
    kinds = Counter(d["reason"].split(":", 1)[0] for d in dead)
    assert kinds == Counter([*run["poison"], "late"])
    assert run["pipeline"].stats.rejected == kinds
    assert all(d["origin"].startswith(Topics.of(settings).trades + "[") for d in dead)


def test_online_offline_and_event_features_agree(run: dict[str, Any]) -> None:
    settings: Settings = run["settings"]
    store = fs.open_store(settings)
    topics = Topics.of(settings)
    events = drain(settings, topics.features)
    examples = drain(settings, topics.examples)
    for symbol in settings.symbols:
        mine = [e for e in events if e["symbol"] == symbol]
        latest = max(mine, key=lambda e: e["ts"])
        labelled = [e for e in examples if e["symbol"] == symbol]
        probe = labelled[len(labelled) // 2]

        online = fs.online_features(store, [symbol])
        online_values = {name: online[name][0] for name in FEATURE_NAMES}
        assert online_values == {name: latest["features"][name] for name in FEATURE_NAMES}

        entities = pd.DataFrame(
            {
                "symbol": [symbol, symbol],
                "event_timestamp": pd.to_datetime([latest["ts"], probe["ts"]], unit="s", utc=True),
            }
        )
        offline = store.get_historical_features(
            entity_df=entities, features=store.get_feature_service(fs.FEATURE_SERVICE)
        ).to_df()
        by_ts = {row["event_timestamp"].timestamp(): row for row in offline.to_dict("records")}
        for ts, expected in ((latest["ts"], latest["features"]), (probe["ts"], probe["features"])):
            assert {n: by_ts[ts][n] for n in FEATURE_NAMES} == {
                n: expected[n] for n in FEATURE_NAMES
            }


def test_a_restarted_pipeline_resumes_without_losing_or_repeating(run: dict[str, Any]) -> None:
    settings: Settings = run["settings"]
    topics = Topics.of(settings)
    before = len(drain(settings, topics.examples))
    # more trades: the market continues where it stopped
    more = list(
        SyntheticMarket(settings.symbols, seed=1, start_ts=run["trades"][0].ts).candles_of_trades(
            CANDLES + 10
        )
    )[len(run["trades"]) :]
    publish(make_producer(settings), topics.trades, more)
    resumed = FeaturePipeline(settings, group_id=run["pipeline"].group_id, commit_interval_s=0.5)
    thread = threading.Thread(target=resumed.run, kwargs={"max_seconds": 60})
    thread.start()
    deadline = time.monotonic() + 60
    while resumed.stats.examples < 2 * 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    resumed.stop.set()
    thread.join(30)
    examples = drain(settings, topics.examples)
    keys = [(e["symbol"], e["ts"]) for e in examples]
    assert len(keys) == len(set(keys)) == before + 2 * 10
    # replay starts at the oldest open candle's first trade; what it reads again was counted
    # in a closed candle or dead-lettered already, and is neither again
    assert not resumed.stats.rejected
