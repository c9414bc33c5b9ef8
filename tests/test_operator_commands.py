"""The operator's window on the real broker: `rtml dlq show`, `rtml dlq replay`, `rtml skip`."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from rtml.app.cli import cli
from rtml.kafka import Topics, consumer_config, dlq, ensure_topics, make_producer, read_messages
from rtml.pipelines.features.feature_pipeline import FeaturePipeline
from rtml.records import Trade
from rtml.settings import Settings
from tests.kafka_helpers import features

pytestmark = pytest.mark.integration


def _env(settings: Settings) -> dict[str, str]:
    return settings.as_env("state_dir", "kafka_port", "redis_port", "mlflow_port", "topic_prefix")


def _letters_and_marks(settings: Settings, topic: str) -> tuple[list[Any], list[str]]:
    """The dead letters on `topic`, and the letters `rtml dlq replay` marked replayed."""
    records = [json.loads(v) for _, v in read_messages(settings, topic)]
    return [r for r in records if "reason" in r], [
        r["replayed"] for r in records if "replayed" in r
    ]


def test_dead_letters_are_shown_replayed_once_fixed_and_a_record_can_be_skipped(
    stack_settings: Settings, stack: object
) -> None:
    tag = uuid.uuid4().hex[:6]
    known, unknown = f"K{tag}", f"U{tag}"
    settings = stack_settings.model_copy(
        update={"topic_prefix": f"op{tag}.", "symbols": (known,), "horizon": 3}
    )
    topics = Topics.of(settings)
    ensure_topics(settings, topics.with_dlqs(), partitions=1)
    producer = make_producer(settings)
    now = time.time()
    trade = Trade(unknown, "1", 10.0, 1.0, "buy", now).to_json()
    producer.produce(topics.trades, key=unknown.encode(), value=json.dumps(trade).encode())
    producer.produce(topics.trades, key=None, value=b"{not json")
    producer.flush(10)
    pipeline = FeaturePipeline(settings, group_id=f"features-{tag}", commit_interval_s=0.5)
    thread = threading.Thread(target=pipeline.run, kwargs={"max_seconds": 60})
    thread.start()
    deadline = time.monotonic() + 60
    while sum(pipeline.stats.rejected.values()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pipeline.stop.set()
    thread.join(30)
    runner = CliRunner()
    env = _env(settings)

    shown = runner.invoke(cli, ["dlq", "show", "trades"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "2 record(s)" in shown.output
    assert "unknown_symbol" in shown.output and "not_json" in shown.output
    assert f"{topics.trades}[0]@0" in shown.output and f"{topics.trades}[0]@1" in shown.output

    # the cause is fixed (the symbol is configured): its record goes back, keyed as it came
    replayed = runner.invoke(
        cli, ["dlq", "replay", "trades", "--reason", "unknown_symbol"], env=env
    )
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 record(s)" in replayed.output
    back = read_messages(settings, topics.trades)
    assert len(back) == 3
    assert back[-1] == (unknown.encode(), json.dumps(trade).encode())

    # the stopped group stands at offset 2 (the replayed record; say no check knows it)
    group = f"features-{tag}"
    behind = runner.invoke(
        cli, ["skip", "trades", "--group", group, "--partition", "0", "--offset", "1"], env=env
    )
    assert behind.exit_code == 0 and "already past" in behind.output, behind.output
    ahead = runner.invoke(
        cli, ["skip", "trades", "--group", group, "--partition", "0", "--offset", "3"], env=env
    )
    assert ahead.exit_code != 0 and "no record at" in ahead.output, ahead.output
    producer.produce(topics.trades, key=known.encode(), value=json.dumps(trade).encode())
    producer.flush(10)
    beyond = runner.invoke(  # would skip the record at 2 as well
        cli, ["skip", "trades", "--group", group, "--partition", "0", "--offset", "3"], env=env
    )
    assert beyond.exit_code != 0 and "stands at 2" in beyond.output, beyond.output
    skipped = runner.invoke(
        cli,
        ["skip", "trades", "--group", group, "--partition", "0", "--offset", "2"],
        env=env,
    )
    assert skipped.exit_code == 0, skipped.output
    reader = Consumer(consumer_config(settings, group))
    assert reader.committed([TopicPartition(topics.trades, 0)], timeout=10)[0].offset == 3
    reader.close()
    dead, marks = _letters_and_marks(settings, dlq(topics.trades))
    assert marks == [f"{dlq(topics.trades)}[0]@0"] and dead[-1]["reason"].startswith("skipped")
    assert dead[-1]["origin"] == f"{topics.trades}[0]@2"
    assert json.loads(dead[-1]["raw"]) == trade


def test_the_trainer_passes_over_a_record_an_operator_skipped(settings: Settings) -> None:
    from rtml.kafka import encode, scan
    from rtml.pipelines.training.trainer import Trainer
    from tests.test_trainer import _shard

    local = _shard(settings)
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    symbol = local.symbols[0]
    records = [
        encode(
            {
                "symbol": symbol,
                "ts": 1_700_000_000.0 + 60 * i,
                "label_ts": 1_700_000_300.0 + 60 * i,
                "features": features(ret_1=0.001 * (i % 3)),
                "target": 0.002,
            }
        )
        for i in range(30)
    ]
    producer = make_producer(local)
    for value in records[:10]:
        producer.produce(topics.examples, key=symbol.encode(), value=value)
    producer.flush(10)
    first = Trainer(local)  # its MLflow run holds what an operator tells it
    assert first.run(max_seconds=60, max_examples=10).learned == 10
    for value in records[10:]:
        producer.produce(topics.examples, key=symbol.encode(), value=value)
    producer.flush(10)
    where: list[tuple[int, int]] = []
    scan(
        local,
        [topics.examples],
        lambda m: where.extend(
            [(m.partition() or 0, m.offset() or 0)] if m.value() == records[15] else []
        ),
    )
    partition, offset = where[0]
    env = local.as_env(
        "state_dir", "kafka_port", "redis_port", "mlflow_port", "topic_prefix", "model_name"
    )
    args = ["skip", "examples", "--trainer", "--partition", str(partition), "--offset", str(offset)]
    runner = CliRunner()
    told = runner.invoke(cli, args, env=env)
    assert told.exit_code == 0 and "passes over it" in told.output, told.output
    again = runner.invoke(cli, args, env=env)
    assert again.exit_code == 0 and "already passes over" in again.output, again.output
    refused = runner.invoke(cli, ["skip", "examples", "--partition", "0", "--offset", "0"], env=env)
    assert refused.exit_code != 0 and "--group G, or --trainer" in refused.output

    second = Trainer(local)  # resumes from the first one's checkpoint
    assert second.run(max_seconds=60, max_examples=29).learned == 29
    assert second.skipped == 1 and not second.rejected
    dead = [json.loads(v) for _, v in read_messages(local, dlq(topics.examples))]
    assert [(d["reason"].split(":")[0], d["origin"]) for d in dead] == [
        ("skipped", f"{topics.examples}[{partition}]@{offset}")
    ]
