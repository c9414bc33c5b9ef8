"""Reading whole topics in tests."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from confluent_kafka import KafkaError

from rtml.kafka import make_consumer
from rtml.settings import Settings


def drain(settings: Settings, topic: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every record of `topic` (all partitions), read until each partition reports its end."""
    consumer = make_consumer(settings, f"drain-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    records: list[dict[str, Any]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                assignment = {tp.partition for tp in consumer.assignment()}
                if assignment and assignment <= at_end:
                    break
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                continue
            at_end.discard(msg.partition() or 0)
            records.append(json.loads(msg.value() or b"null"))
    finally:
        consumer.close()
    return records
