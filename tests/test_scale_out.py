"""Scale-out on the real stack: predictor replicas in one group, trainer shards, routing."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from fastapi.testclient import TestClient

from rtml import feature_store as fs
from rtml import registry
from rtml.kafka import Topics, encode, ensure_topics, make_producer
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.pipelines.training.learner import Learner
from rtml.pipelines.training.models import build_model
from rtml.pipelines.training.trainer import Trainer
from rtml.records import Example, FeatureRow
from rtml.serving.app import create_app
from rtml.serving.model_holder import ModelHolder, ModelRouter
from rtml.serving.stream import StreamingPredictor
from rtml.settings import Settings
from tests.kafka_helpers import drain

pytestmark = pytest.mark.integration


def _learner() -> Learner:
    learner = Learner(build_model("linear"))
    for t in range(50):
        x = {n: (t % 5) / 100 for n in FEATURE_NAMES}
        learner.step(Example("X", float(t), float(t + 300), x, x["ret_1"]))
    return learner


def test_two_predictor_replicas_share_the_partitions_and_predict_each_record_once(
    settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={
            "topic_prefix": f"so{tag}.",
            "model_name": f"replicas-{tag}",
            "symbols": tuple(f"S{i}{tag}" for i in range(8)),
        }
    )
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs(), partitions=4)
    registry.promote(local, registry.log_version(local, _learner()))
    holder = ModelHolder(local)
    holder.refresh()
    replicas = [StreamingPredictor(local, holder, group_id=f"group-{tag}") for _ in range(2)]
    threads = [threading.Thread(target=r.run, kwargs={"max_seconds": 90}) for r in replicas]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(len(r.assignment) == 2 for r in replicas):
        time.sleep(0.1)
    assert [len(r.assignment) for r in replicas] == [2, 2]
    assert not replicas[0].assignment & replicas[1].assignment

    producer = make_producer(local)
    values = {n: 0.01 for n in [*FEATURE_NAMES, "close", "volume"]}
    sent = 0
    for i in range(100):
        for symbol in local.symbols:
            row = FeatureRow(symbol, 1_700_000_000 + 60 * i, values)
            producer.produce(topics.features, key=symbol.encode(), value=encode(row.to_json()))
            sent += 1
    producer.flush(30)
    while time.monotonic() < deadline + 30 and sum(r.predicted for r in replicas) < sent:
        time.sleep(0.1)
    for r in replicas:
        r.stop.set()
    for t in threads:
        t.join(30)

    assert all(r.predicted > 0 for r in replicas), [r.predicted for r in replicas]
    predictions = drain(local, topics.predictions)
    counts = Counter((p["symbol"], p["ts"]) for p in predictions)
    assert len(counts) == sent
    assert set(counts.values()) == {1}
    assert {p["model"] for p in predictions} == {local.model_name}


def test_trainer_shards_register_their_own_models_and_predictors_route_to_them(
    settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:6]
    majors, alts = (f"BTC{tag}", f"ETH{tag}"), (f"SOL{tag}",)
    local = settings.model_copy(
        update={
            "topic_prefix": f"sh{tag}.",
            "model_name": f"sharded-{tag}",
            "symbols": (*majors, *alts),
            "shards": {"majors": majors, "alts": alts},
            "checkpoint_every": 200,
            "checkpoint_min_interval_s": 0.0,
            "max_mae": 1.0,
            "gate_z": -1e9,  # a margin every candidate clears
            "gate_alpha": 1.0,
        }
    )
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    market = SyntheticMarket(local.symbols, seed=4, start_ts=1_700_000_040)
    processor = FeatureProcessor(local.candle_seconds, 0, local.horizon)
    examples = [
        ex for trade in market.candles_of_trades(300) for ex in processor.on_trade(trade).examples
    ]
    producer = make_producer(local)
    for ex in examples:
        producer.produce(topics.examples, key=ex.symbol.encode(), value=encode(ex.to_json()))
    producer.flush(30)
    per_symbol = Counter(ex.symbol for ex in examples)

    trainers = {
        shard: Trainer(local.model_copy(update={"shard": shard}).as_shard(), f"t-{shard}-{tag}")
        for shard in local.shards
    }
    runs = [threading.Thread(target=t.run, kwargs={"max_seconds": 120}) for t in trainers.values()]
    for r in runs:
        r.start()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and any(r.is_alive() for r in runs):
        for t in trainers.values():  # stop each once it has read the whole topic
            if sum(t.offsets.values()) >= len(examples):
                t.stop.set()
        time.sleep(0.1)
    for r in runs:
        r.join(30)

    for shard, trainer in trainers.items():
        assert trainer.learner is not None
        assert trainer.settings.model_name == local.shard_model(shard)
        assert set(trainer.learner.last_ts) == set(local.shards[shard])
        assert trainer.learner.learned == sum(per_symbol[s] for s in local.shards[shard])
        assert trainer.other_shards == len(examples) - trainer.learner.learned
        assert trainer.uploader is not None and trainer.uploader.uploaded
        candidate = registry.alias_version(trainer.settings, registry.CANDIDATE)
        assert candidate == trainer.uploader.registered[-1]
        # whether the gate promoted it depends on the data; routing must follow either way
        registry.promote(trainer.settings, candidate)

    router = ModelRouter(local)
    router.refresh()
    assert router.missing() == []
    for shard, symbols in local.shards.items():
        champion = registry.alias_version(trainers[shard].settings, registry.CHAMPION)
        for symbol in symbols:
            served = router.for_symbol(symbol)
            assert served is not None and served.version == champion
            assert served.model == local.shard_model(shard)
            # the version's logged model records the symbols it learned: none of another shard's
            mlflow_client = registry.client(local)
            source = mlflow_client.get_model_version(served.model, champion).source
            logged = mlflow_client.get_logged_model(str(source).removeprefix("models:/"))
            assert set(filter(None, logged.params["symbols"].split(","))) <= set(symbols)
    assert router.for_symbol("DOGE/USD") is None

    client = TestClient(create_app(local, router, fs.open_store(local)))
    rows = {"rows": [{"ret_1": 0.01}]}
    assert client.post("/predict", json=rows).status_code == 422  # which shard's model?
    assert client.get("/predict/DOGE").status_code == 404
    for shard, symbols in local.shards.items():
        body = client.post("/predict", params={"symbol": symbols[0]}, json=rows).json()
        assert body["model"] == local.shard_model(shard)
        assert body["model_version"] == registry.alias_version(trainers[shard].settings, "champion")
