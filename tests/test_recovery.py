"""Recovery that trusts only the pipeline's own records: forged records on its outputs, the
embedded broker's transactions, `rtml dlq replay` run again and again."""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from rtml.app.cli import cli
from rtml.kafka import (
    Topics,
    client_config,
    dlq,
    ensure_topics,
    make_producer,
    read_messages,
    read_topic,
)
from rtml.pipelines.features.feature_pipeline import FeaturePipeline
from rtml.pipelines.features.feed import publish
from rtml.records import Trade
from rtml.settings import Settings
from tests.test_pipeline_crash import _market, expected_outputs

pytestmark = pytest.mark.integration


def _run_until(pipeline: FeaturePipeline, done: Any, timeout: float = 120) -> None:
    """Run `pipeline` in a thread until `done()` holds, then stop it cleanly."""
    thread = threading.Thread(target=pipeline.run, kwargs={"max_seconds": timeout + 30})
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        pipeline.stop.set()
        thread.join(60)
    assert done(), pipeline.stats.line()


def _produce(settings: Settings, values: list[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Produce (key, value) pairs to `trades`; returns their (partition, offset), in order."""
    producer = make_producer(settings)
    where: dict[int, tuple[int, int]] = {}

    def delivered(i: int, error: object, msg: Any) -> None:
        assert error is None, error
        where[i] = (msg.partition(), msg.offset())

    for i, (key, value) in enumerate(values):
        producer.produce(
            Topics.of(settings).trades,
            key=key,
            value=value,
            on_delivery=functools.partial(delivered, i),
        )
    producer.flush(30)
    return [where[i] for i in range(len(values))]


@pytest.mark.timeout(600)
def test_records_others_write_to_the_outputs_change_nothing_the_pipeline_does(
    stack_settings: Settings, stack: object
) -> None:
    """Forged on `trades.dlq` (origins at a huge offset on every partition), on `features` (a
    row a week ahead, with a `rtml.source` header past every trade) and on `examples`; then the
    pipeline restarts, and late and bad trades come: every one reaches the DLQ, and the
    symbols' topics go on, each row once."""
    settings, trades, group = _market(stack_settings, "f", 2, 40, seed=11)
    settings = settings.model_copy(update={"commit_interval_s": 1.0})
    topics = Topics.of(settings)
    half = len(trades) // 2
    want_features, want_examples = expected_outputs(settings, trades)
    producer = make_producer(settings)
    publish(producer, topics.trades, trades[:half])
    producer.flush(30)
    first = FeaturePipeline(settings, group_id=group)
    _run_until(first, lambda: first.stats.examples > 0 and first.stats.trades >= half)

    week = time.time() + 7 * 86_400
    for symbol in settings.symbols:
        for p in range(4):
            forged = {"reason": "not_json: forged", "origin": f"{topics.trades}[{p}]@999999999999"}
            producer.produce(dlq(topics.trades), key=symbol.encode(), value=orjson.dumps(forged))
        row = {"symbol": symbol, "ts": week, "features": {"close": 1.0}}
        for p in range(4):
            producer.produce(
                topics.features,
                key=symbol.encode(),
                value=orjson.dumps(row),
                headers=[("rtml.source", f"{p}@999999999999".encode())],
            )
        example = {"symbol": symbol, "ts": week, "label_ts": week, "features": {}, "target": 0.0}
        producer.produce(topics.examples, key=symbol.encode(), value=orjson.dumps(example))
    producer.flush(30)
    forged_letters = len(read_messages(settings, dlq(topics.trades)))

    # a restart, then the rest of the market with bad and late trades among it
    symbol = settings.symbols[0]
    early = next(t for t in trades if t.symbol == symbol)
    late = Trade(symbol, "late-1", early.price, 1.0, "buy", early.ts)
    bad: list[tuple[bytes | None, bytes]] = [
        (symbol.encode(), b"{not json"),
        (symbol.encode(), orjson.dumps({**late.to_json(), "trade_id": "x", "price": -1.0})),
        (symbol.encode(), orjson.dumps(late.to_json())),
        (symbol.encode(), orjson.dumps({**late.to_json(), "trade_id": "late-2"})),
    ]
    positions = _produce(settings, bad)
    publish(producer, topics.trades, trades[half:])
    producer.flush(30)
    second = FeaturePipeline(settings, group_id=group)

    def finished() -> bool:
        seen = {(e["symbol"], e["ts"]) for e in read_topic(settings, topics.examples)}
        return want_examples <= seen

    _run_until(second, finished, timeout=180)

    letters = [orjson.loads(v) for _, v in read_messages(settings, dlq(topics.trades))]
    ours = Counter(d["origin"] for d in letters[forged_letters:])
    assert {f"{topics.trades}[{p}]@{o}" for p, o in positions} <= set(ours)
    assert all(n == 1 for n in ours.values()), ours
    # the forged rows are not the pipeline's: each expected row is there once besides them
    got = [r for r in read_topic(settings, topics.features) if r["ts"] != week]
    assert Counter((r["symbol"], r["ts"]) for r in got).most_common(1)[0][1] == 1
    assert set(want_features) <= {(r["symbol"], r["ts"]) for r in got}
    assert second.stats.rejected["late"] == 2 and second.stats.rejected["not_json"] == 1
    _assert_unique_examples(settings, week)


def _assert_unique_examples(settings: Settings, forged_ts: float) -> None:
    got = [e for e in read_topic(settings, Topics.of(settings).examples) if e["ts"] != forged_ts]
    counts = Counter((e["symbol"], e["ts"]) for e in got)
    assert [k for k, n in counts.items() if n > 1] == []


def test_the_embedded_broker_shows_aborted_records_to_read_committed_consumers(
    stack_settings: Settings, stack: object
) -> None:
    """Why rtml reads back its outputs instead of leaning on Kafka transactions: this broker
    accepts them (and fences a producer whose transactional id was taken over), but a
    `read_committed` consumer still sees what was aborted. Should it ever hide them, this test
    fails, and transactions become the simpler design."""
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    settings = stack_settings
    ensure_topics(settings, [topic], partitions=1)
    tid = f"rtml-test-{uuid.uuid4().hex[:6]}"
    producer = Producer({**client_config(settings), "transactional.id": tid})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    successor = Producer({**client_config(settings), "transactional.id": tid})
    successor.init_transactions(30)  # fences `producer`
    with pytest.raises(KafkaException):
        producer.begin_transaction()
        producer.produce(topic, b"zombie")
        producer.commit_transaction(30)
    consumer = Consumer(
        {
            **client_config(settings),
            "group.id": f"rc-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            break  # the end of the partition
        seen.append(msg.value() or b"")
    consumer.close()
    assert seen == [b"committed", b"aborted"]


def test_dlq_replay_three_times_gives_the_topics_of_one_run(
    stack_settings: Settings, stack: object
) -> None:
    """Each letter is replayed once, a re-rejection is not replayed again, a null key stays
    null, and a key cut to fit its letter is refused with a reason."""
    tag = uuid.uuid4().hex[:6]
    settings = stack_settings.model_copy(
        update={"topic_prefix": f"dr{tag}.", "symbols": (f"K{tag}",), "horizon": 3}
    )
    topics = Topics.of(settings)
    ensure_topics(settings, topics.with_dlqs(), partitions=2)
    now = time.time()
    bad = orjson.dumps(Trade(f"K{tag}", "1", 0.0, 1.0, "buy", now).to_json())  # not positive
    _produce(
        settings,
        [
            (f"K{tag}".encode(), bad),
            (None, b"{not json"),
            (b"k" * 500_000, b"{not json either"),
        ],
    )
    pipeline = FeaturePipeline(settings, group_id=f"features-{tag}", commit_interval_s=0.5)
    _run_until(pipeline, lambda: sum(pipeline.stats.rejected.values()) >= 3)
    env = settings.as_env("state_dir", "kafka_port", "redis_port", "mlflow_port", "topic_prefix")
    runner = CliRunner()
    outputs = []
    snapshots = []
    for rejected in (2, 0, 0):
        result = runner.invoke(cli, ["dlq", "replay", "trades"], env=env)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
        # the pipeline reads what was replayed and rejects it again
        again = FeaturePipeline(settings, group_id=f"features-{tag}", commit_interval_s=0.5)
        _run_until(again, lambda a=again, n=rejected: sum(a.stats.rejected.values()) >= n)
        snapshots.append(
            (
                len(read_messages(settings, topics.trades)),
                len(read_messages(settings, dlq(topics.trades))),
            )
        )
    assert "replayed 2 record(s)" in outputs[0] and "key was cut" in outputs[0], outputs[0]
    assert "replayed 0 record(s)" in outputs[1] and "replayed 0 record(s)" in outputs[2]
    assert snapshots[0] == snapshots[1] == snapshots[2], snapshots
    # the two exact copies are back, the null key null; the one with a cut key is not
    back = Counter(read_messages(settings, topics.trades))
    sent = [(f"K{tag}".encode(), bad), (None, b"{not json"), (b"k" * 500_000, b"{not json either")]
    assert back == Counter(sent) + Counter(sent[:2])
    letters = [json.loads(v) for _, v in read_messages(settings, dlq(topics.trades))]
    assert sum(1 for d in letters if d.get("replay_of")) == 2
