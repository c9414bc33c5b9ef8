"""The trainer on the real stack: warm start, learning from Kafka, checkpoints, gate, resume."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from rtml import checkpoints, registry
from rtml import feature_store as fs
from rtml.kafka import Topics, encode, ensure_topics, make_producer
from rtml.pipelines.features.feed import backfill
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.pipelines.training.retrain import retrain
from rtml.pipelines.training.trainer import Trainer
from rtml.serving.model_holder import ModelHolder
from rtml.settings import Settings
from tests.kafka_helpers import drain
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

HISTORY_CANDLES = 150
STREAM_CANDLES = 400
START = 1_700_000_040.0


def _shard(settings: Settings, **update: Any) -> Settings:
    tag = uuid.uuid4().hex[:6]
    return settings.model_copy(
        update={
            "topic_prefix": f"tr{tag}.",
            "symbols": (f"A{tag}", f"B{tag}"),
            "model_name": f"model-{tag}",
            "checkpoint_every": 150,
            "checkpoint_interval_s": 1.0,
            "checkpoint_min_interval_s": 0.0,  # every `checkpoint_every`, however fast
            "warm_start_epochs": 2,
            "metrics_window": 200,
            "register_interval_s": 0.0,
            **update,
        }
    )


def _history_and_stream(settings: Settings) -> tuple[int, list[bytes]]:
    """Backfill the first candles offline; returns how many examples that labelled, and the
    records of the examples labelled after it, for the stream."""
    market = SyntheticMarket(settings.symbols, seed=9, start_ts=START)
    trades = list(market.candles_of_trades(HISTORY_CANDLES + STREAM_CANDLES))
    history_end = START + HISTORY_CANDLES * 60
    cut = next(i for i, t in enumerate(trades) if t.ts >= history_end)
    stats = backfill(settings, trades[:cut], write_online=False)
    processor = FeatureProcessor(settings.candle_seconds, 0, settings.horizon)
    records = [
        encode(ex.to_json())
        for trade in trades
        for ex in processor.on_trade(trade).examples
        if ex.label_ts > history_end
    ]
    return stats.examples, records


def _produce(settings: Settings, records: list[bytes]) -> None:
    producer = make_producer(settings)
    topic = Topics.of(settings).examples
    for value in records:
        producer.produce(topic, key=b"k", value=value)
    producer.flush(10)


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTML_")}
    return env | settings.as_env(
        "state_dir",
        "kafka_port",
        "redis_port",
        "mlflow_port",
        "topic_prefix",
        "symbols",
        "model_name",
        "checkpoint_every",
        "checkpoint_interval_s",
        "warm_start_epochs",
        "metrics_window",
        "register_interval_s",
    )


def _probe(learner: Any) -> list[float]:
    rng = random.Random(0)
    names = ["ret_1", "ret_5", "ret_15", "vol_15", "range_pct", "volume_z", "vwap_dist", "rsi_14"]
    return [learner.predict_one({n: rng.gauss(0, 0.01) for n in names}) for _ in range(20)]


def _train_forever(settings: Settings) -> None:
    """A trainer process's whole life, until it is killed."""
    Trainer(settings).run()


def _trainer_processes() -> Any:
    """Trainer processes forked from a server that has imported rtml once: a kill and a
    restart cost milliseconds, not the seconds of a fresh interpreter's imports."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["rtml.pipelines.training.trainer", "tests.test_trainer"])
    return context


@pytest.mark.faults
# one seed in the fast tier, four more in the slow one
@pytest.mark.parametrize(
    "seed", [1, *(pytest.param(s, marks=pytest.mark.slow) for s in (2, 3, 4, 5))]
)
def test_sigkilled_trainer_ends_equal_to_an_uninterrupted_run(
    settings: Settings, seed: int
) -> None:
    local = _shard(settings, checkpoint_every=25, checkpoint_queue=4)
    topics = Topics.of(local)
    ensure_topics(local, [topics.examples], partitions=1)  # one partition: one order to replay
    ensure_topics(local, topics.with_dlqs())
    warm, records = _history_and_stream(local)
    total = warm + len(records)
    half = len(records) // 2

    rng = random.Random(seed)
    processes = _trainer_processes()
    for chunk in (records[:half], records[half:]):
        before = checkpoints.learned(local)
        proc = processes.Process(target=_train_forever, args=(local,))
        proc.start()
        _produce(local, chunk)
        deadline = time.monotonic() + 120  # until it checkpoints: it is up and learning
        while checkpoints.learned(local) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment: learning, queued or uploading
        proc.kill()  # SIGKILL
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL

    resumed = Trainer(local).run(max_seconds=120, max_examples=total)
    reference_settings = local.model_copy(update={"model_name": local.model_name + "-ref"})
    expected = Trainer(reference_settings).run(max_seconds=120, max_examples=total)

    assert resumed.learned == expected.learned == total
    assert resumed.skipped == expected.skipped == 0
    assert _probe(resumed) == _probe(expected)
    assert resumed.metrics() == expected.metrics()
    restored = checkpoints.latest_checkpoint(local)
    assert restored is not None and restored.learner.learned == total


def test_a_diverging_model_is_never_promoted(settings: Settings) -> None:
    local = _shard(settings, model="linear", model_params={"lr": 50.0})
    ensure_topics(local, Topics.of(local).with_dlqs())
    warm, records = _history_and_stream(local)
    _produce(local, records)
    trainer = Trainer(local)
    trainer.run(max_seconds=60, max_examples=warm + len(records))
    assert trainer.uploader is not None and trainer.uploader.decisions
    assert not any(promoted for _, promoted, _ in trainer.uploader.decisions)
    assert registry.alias_version(local, registry.CHAMPION) is None
    # the first fit is registered as a candidate for a person to inspect, never promoted
    assert registry.alias_version(local, registry.CANDIDATE) == trainer.uploader.registered[-1]

    # it raised one alert when it started diverging, naming the version and why
    diverging = [a for a in drain(local, Topics.of(local).alerts) if a["kind"] == "diverging"]
    assert len(diverging) == 1, diverging
    assert diverging[0]["model"] == local.model_name
    assert diverging[0]["learned"] > 0
    assert "MAX_MAE" in diverging[0]["reason"] or diverging[0]["rolling_mae"] is None


def test_a_healthy_model_is_promoted_and_rollback_and_promote_move_the_alias(
    settings: Settings,
) -> None:
    local = _shard(settings, keep_versions=3)
    ensure_topics(local, Topics.of(local).with_dlqs())
    warm, records = _history_and_stream(local)
    _produce(local, records)
    trainer = Trainer(local)
    learner = trainer.run(max_seconds=60, max_examples=warm + len(records))
    assert trainer.uploader is not None

    # drifts seen on the stream were announced on `alerts`
    alerts = drain(local, Topics.of(local).alerts)
    assert len(alerts) == learner.drifts - trainer.drifts_at_start
    assert all(a["kind"] == "drift" and a["symbol"] in local.symbols for a in alerts)

    # at most keep_versions plus the aliased ones survive the trainer's pruning
    kept = registry.client(local).search_model_versions(f"name='{local.model_name}'")
    assert len(kept) <= 3 + 2
    promoted = [v for v, ok, _ in trainer.uploader.decisions if ok]
    assert promoted, trainer.uploader.decisions
    assert registry.alias_version(local, registry.CHAMPION) == promoted[-1]

    # two versions for a person to move between, whatever else the gate let through
    first = trainer.uploader.registered[0]
    metadata = {"trained_through": learner.watermark, "learned": learner.learned}
    last = registry.log_version(
        local, learner.model, feature_names=FEATURE_NAMES, metadata=metadata
    )
    registry.promote(local, first)
    registry.promote(local, last)
    assert registry.alias_version(local, registry.CHAMPION) == last

    # `rtml rollback` moves serving back within the predictor's poll interval
    holder = ModelHolder(local.model_copy(update={"model_poll_s": 0.5}))
    holder.refresh()
    holder.start()
    try:
        assert holder.current is not None and holder.current.version == last
        rolled = subprocess.run(
            [sys.executable, "-m", "rtml.app.cli", "rollback"],
            env=_env(local),
            timeout=120,
            check=False,
        )
        assert rolled.returncode == 0
        # the predictor's next polls find it (how soon: `make bench`, staleness)
        wait_until(
            lambda: holder.current is not None and holder.current.version == first,
            60,
            "serving to move back",
        )
    finally:
        holder.stop()
    assert registry.alias_version(local, registry.CHAMPION) == first
    # a rollback is a person's decision: it pins the champion, and says who made it
    found = registry.decision(local)
    assert found is not None and found["action"] == "rollback" and found["pinned"]
    assert found["version"] == first and found["by"]

    # a pinned champion is not moved by a retrain that passes the gate
    version, decision = retrain(local)
    assert registry.alias_version(local, registry.CHAMPION) == first
    registry.auto(local)
    version, decision = retrain(local)
    tags = registry.client(local).get_model_version(local.model_name, version).tags
    assert tags["gate"] == decision.reason and tags["source"] == "retrain"
    served = registry.alias_version(local, registry.CHAMPION)
    assert (served == version) == decision.promote


def test_a_rollback_holds_while_the_trainer_promotes_until_promote_auto(
    settings: Settings,
) -> None:
    # a margin every candidate clears: this is about who decides, not the gate's judgement
    local = _shard(
        settings, checkpoint_every=40, checkpoint_interval_s=0.5, gate_z=-1e9, gate_alpha=1.0
    )
    ensure_topics(local, Topics.of(local).with_dlqs())
    _, records = _history_and_stream(local)
    thirds = [records[: len(records) // 3], records[len(records) // 3 : 2 * len(records) // 3]]
    thirds.append(records[2 * len(records) // 3 :])
    trainer = Trainer(local)
    thread = threading.Thread(target=trainer.run, kwargs={"max_seconds": 150}, daemon=True)
    thread.start()
    cli = [sys.executable, "-m", "rtml.app.cli"]
    try:
        _produce(local, thirds[0])
        _wait(lambda: len(registry.champion_history(local)) >= 2, 90, "two promotions")
        rolled = subprocess.run([*cli, "rollback"], env=_env(local), timeout=120, check=False)
        assert rolled.returncode == 0
        pinned = registry.alias_version(local, registry.CHAMPION)
        registered = len(trainer.uploader.registered) if trainer.uploader else 0

        # the trainer goes on registering candidates that pass, but the champion stays
        _produce(local, thirds[1])
        checkpoints = len(trainer.uploader.uploaded) if trainer.uploader else 0
        _wait(
            lambda: (
                trainer.uploader is not None
                and len(trainer.uploader.uploaded) > checkpoints
                and len(trainer.uploader.registered) > registered
            ),
            90,
            "another checkpoint and a new candidate",
        )
        assert registry.alias_version(local, registry.CHAMPION) == pinned
        assert registry.alias_version(local, registry.CANDIDATE) != pinned

        auto = subprocess.run(
            [*cli, "promote", "--auto"], env=_env(local), timeout=120, check=False
        )
        assert auto.returncode == 0
        _produce(local, thirds[2])
        # the alias moves first, then the record of who moved it: wait for the record
        _wait(
            lambda: (registry.decision(local) or {}).get("by") == registry.TRAINER,
            90,
            "the gate to promote again",
        )
        found = registry.decision(local)
        assert found is not None and not found["pinned"] and found["version"] != pinned
        assert registry.alias_version(local, registry.CHAMPION) == found["version"]
    finally:
        trainer.stop.set()
        thread.join(60)


def test_the_trainer_run_carries_its_params_and_is_resumed_not_duplicated(
    settings: Settings,
) -> None:
    local = _shard(settings)
    ensure_topics(local, Topics.of(local).with_dlqs())
    _history_and_stream(local)
    seen: list[str] = []

    def status() -> None:
        run = checkpoints._trainer_run(local)
        if run is not None:
            seen.append(run.info.status)

    first = Trainer(local)
    thread = threading.Thread(target=first.run, kwargs={"max_seconds": 8}, daemon=True)
    thread.start()
    _wait(lambda: checkpoints.learned(local) is not None, 60, "a checkpoint")
    status()
    thread.join(60)
    Trainer(local).run(max_seconds=2)
    client = registry.client(local)
    experiment = client.get_experiment_by_name(local.experiment_name)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`{registry.TRAINER_TAG}` = '{local.model_name}'"
    )
    assert len(runs) == 1  # resumed, not duplicated
    assert seen == ["RUNNING"]  # while it trained
    assert runs[0].info.status == "FINISHED"  # after a clean stop
    params = runs[0].data.params
    assert params["model"] == local.model and params["feature_service"]
    assert params["symbols"] == ",".join(local.symbols)
    assert int(params["dataset.examples"]) > 0 and params["dataset.from"] < params["dataset.to"]


def test_a_version_names_its_run_its_training_data_and_its_metrics_in_mlflow(
    settings: Settings,
) -> None:
    """What the MLflow UI shows a user: the version's source run lists it among its registered
    models, the run's inputs hold the warm start's dataset, and the metrics are on the logged
    model and the run, not strings in the version's tags."""
    local = _shard(settings)
    ensure_topics(local, Topics.of(local).with_dlqs())
    warm, records = _history_and_stream(local)
    _produce(local, records)
    trainer = Trainer(local)
    trainer.run(max_seconds=60, max_examples=warm + len(records))
    assert trainer.uploader is not None and trainer.uploader.registered
    client = registry.client(local)
    version = client.get_model_version(local.model_name, trainer.uploader.registered[-1])

    assert version.run_id is not None and version.run_id == trainer.run_id  # the source run
    run = client.get_run(version.run_id)
    assert run.info.run_name == f"trainer {local.model_name}"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[registry.EXPERIMENT_KIND] == "custom_model_development"

    assert run.inputs is not None and run.outputs is not None
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1, inputs
    dataset = inputs[0].dataset
    assert dataset.name == fs.FEATURE_SERVICE and len(dataset.digest) == 16
    assert {(t.key, t.value) for t in inputs[0].tags} == {("mlflow.data.context", "training")}
    assert str(local.offline_dir.resolve()) in dataset.source

    assert version.source is not None and version.source.startswith("models:/"), version.source
    model_id = version.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run.info.run_id
    assert set(logged.params["symbols"].split(",")) == set(local.symbols)
    assert int(logged.params["dataset.examples"]) == warm  # the run's params, carried over
    on_model = {m.key: m.value for m in logged.metrics or []}
    assert {"rolling_mae", "baseline_rolling_mae", "mae"} <= set(on_model), on_model
    outputs = {o.model_id for o in run.outputs.model_outputs}
    assert model_id in outputs  # the run page lists it

    assert not [k for k in version.tags if k.startswith("metric.")], version.tags
    assert set(version.tags) <= {"gate", "trained_through", "learned"}, version.tags


def _wait(condition: Any, seconds: float, what: str) -> None:
    wait_until(condition, seconds, what)
