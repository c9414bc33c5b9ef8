"""The embedded stack's services, used the way rtml's components use them."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Message

from rtml.app.processes import SERVICES
from rtml.app.stack import Stack
from rtml.kafka import encode, ensure_topics, make_consumer, make_producer
from rtml.settings import Settings

pytestmark = pytest.mark.integration


def _produce(settings: Settings, topic: str, n: int, keys: int = 1) -> None:
    producer = make_producer(settings)
    for i in range(n):
        producer.produce(topic, key=f"k{i % keys}".encode(), value=encode({"i": i}))
    assert producer.flush(10) == 0


def _values(messages: list[Message]) -> list[int]:
    import json

    return [json.loads(m.value() or b"")["i"] for m in messages]


def _poll_until(consumer: Consumer, want: int, timeout: float = 20.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        error = msg.error()
        if error is not None and error.code() == KafkaError._PARTITION_EOF:
            continue
        assert error is None, error
        got.append(msg)
    return got


def test_all_services_healthy(stack: Stack) -> None:
    rows = stack.status()
    assert [r.name for r in rows] == list(SERVICES)
    assert all(r.healthy and r.pid for r in rows), rows


def test_produce_consume_with_committed_offset(settings: Settings, topic_name: str) -> None:
    ensure_topics(settings, [topic_name], partitions=1)
    _produce(settings, topic_name, 10)
    group = f"g-{uuid.uuid4().hex[:8]}"

    first = make_consumer(settings, group)
    first.subscribe([topic_name])
    got = _poll_until(first, 4)
    assert _values(got) == [0, 1, 2, 3]
    first.commit(message=got[-1], asynchronous=False)
    first.close()

    second = make_consumer(settings, group)
    second.subscribe([topic_name])
    rest = _poll_until(second, 6)
    second.close()
    assert _values(rest) == [4, 5, 6, 7, 8, 9]


def test_two_consumers_in_one_group_split_partitions(settings: Settings, topic_name: str) -> None:
    ensure_topics(settings, [topic_name], partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    received: dict[str, list[int]] = {"a": [], "b": []}
    assigned: dict[str, set[int]] = {"a": set(), "b": set()}
    stop = threading.Event()

    def run(name: str) -> None:
        consumer = make_consumer(settings, group)
        consumer.subscribe([topic_name])
        while not stop.is_set():
            msg = consumer.poll(0.2)
            assigned[name] = {tp.partition for tp in consumer.assignment()}
            if msg is None or msg.error():
                continue
            received[name].append(msg.partition() or 0)
        consumer.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in received]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        assigned["a"] and assigned["b"] and len(assigned["a"] | assigned["b"]) == 4
    ):
        time.sleep(0.2)
    _produce(settings, topic_name, 200, keys=16)
    while time.monotonic() < deadline and len(received["a"]) + len(received["b"]) < 200:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(15)

    assert assigned["a"].isdisjoint(assigned["b"])
    assert received["a"] and received["b"]
    assert len(received["a"]) + len(received["b"]) == 200
    assert set(received["a"]) <= assigned["a"] and set(received["b"]) <= assigned["b"]


def test_redis_round_trip(settings: Settings) -> None:
    import redis

    client = redis.Redis.from_url(settings.redis)
    key = f"test:{uuid.uuid4().hex}"
    client.set(key, b"value", ex=60)
    assert client.get(key) == b"value"
    client.delete(key)
    assert client.get(key) is None
