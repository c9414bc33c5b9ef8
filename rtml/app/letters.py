"""`rtml dlq replay`: dead letters back onto the topic they came from, each once.

A replayed record carries the letter it came from (header `rtml.replay-of`), and once it is
delivered a marker `{"replayed": "<dlq>[p]@o"}` goes onto the DLQ beside the letter. A later
run passes over a letter with a marker, and over a letter that is itself the rejection of a
replayed record (`replay_of`): run twice or ten times, the topics hold what one run left.
Only exact copies are replayed: a letter whose value or key was cut to fit is refused.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from rtml.dead_letters import REPLAY_HEADER, replay_value
from rtml.kafka import Topics, dlq, encode, make_consumer, make_producer, send
from rtml.settings import Settings

MARKER = "replayed"
"""The field of a marker record: the position of the letter it says was replayed."""


@dataclass
class Report:
    target: str
    sent: int = 0
    done_before: int = 0  # letters an earlier run replayed
    replays: int = 0  # rejections of replayed records
    other_reason: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    foreign: int = 0

    def line(self) -> str:
        parts = [f"replayed {self.sent} record(s) onto {self.target}"]
        if self.done_before:
            parts.append(f"{self.done_before} replayed by an earlier run")
        if self.replays:
            parts.append(f"{self.replays} rejected again after a replay (fix their cause first)")
        if self.other_reason:
            parts.append(f"{self.other_reason} of other reasons")
        parts += [f"{n} refused: {why}" for why, n in sorted(self.refused.items())]
        if self.foreign:
            parts.append(f"{self.foreign} record(s) that are not rtml's dead letters left alone")
        return "; ".join(parts)


def read_all(settings: Settings, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record of `topic` with its position, read to the end of each partition."""
    consumer = make_consumer(settings, f"rtml-dlq-{uuid.uuid4().hex[:8]}")
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        partitions = sorted(metadata.partitions) if metadata is not None else []
        if not partitions:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        remaining, records = set(partitions), []
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                error = msg.error()
                if error is None:
                    records.append(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition() or 0)
        if remaining:
            raise TimeoutError(f"{topic} partitions {sorted(remaining)} not read to their end")
        return records
    finally:
        consumer.close()


def replay_letters(settings: Settings, topic: str, reason: str | None = None) -> Report:
    """Replay `topic`'s dead letters not replayed before (of `reason` only, if given)."""
    target = getattr(Topics.of(settings), topic)
    source = dlq(target)
    report = Report(target)
    records = read_all(settings, source)
    letters: list[tuple[str, bytes | None, dict[str, Any]]] = []
    done: set[str] = set()
    for msg in records:
        try:
            record = orjson.loads(msg.value() or b"null")
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get(MARKER), str):
            done.add(record[MARKER])
        elif isinstance(record, dict) and "reason" in record:
            letters.append((f"{source}[{msg.partition()}]@{msg.offset()}", msg.key(), record))
        else:
            report.foreign += 1
    producer = make_producer(settings)
    replayed: list[tuple[str, bytes | None]] = []
    for position, key, record in letters:
        if position in done:
            report.done_before += 1
            continue
        if record.get("replay_of"):
            report.replays += 1
            continue
        if reason is not None and str(record.get("reason", "")).split(":", 1)[0] != reason:
            report.other_reason += 1
            continue
        value = replay_value(record)
        why = _refused(record, value)
        if why:
            report.refused[why] = report.refused.get(why, 0) + 1
            continue
        send(
            producer,
            target,
            value,
            key=None if _keyless(key, record) else key,
            headers=[(REPLAY_HEADER, position.encode())],
        )
        replayed.append((position, key))
        report.sent += 1
    if producer.flush(30) > 0:
        raise TimeoutError(f"replayed records to {target} not delivered: run it again")
    for position, key in replayed:  # only once the records are delivered
        send(producer, source, encode({MARKER: position}), key=key)
    if producer.flush(30) > 0:
        raise TimeoutError(f"markers to {source} not delivered: a run again would repeat some")
    return report


def _refused(record: dict[str, Any], value: bytes | None) -> str | None:
    if value is None:
        return "the value was cut (or is not rtml's copy)"
    if record.get("key_truncated"):
        return f"the key was cut from {record.get('key_bytes')} bytes"
    return None


def _keyless(key: bytes | None, record: dict[str, Any]) -> bool:
    """A record that came without a key: said by its letter, or (letters of older rtml) its
    letter keyed by the partition it came from."""
    if record.get("key_null"):
        return True
    return key == str(record.get("origin", "")).rsplit("@", 1)[0].encode()
