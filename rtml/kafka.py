"""The one wrapper around Kafka clients: shared configuration, topic creation, JSON records.

The same configuration works on the embedded broker and on Apache Kafka or Redpanda. Records
are JSON objects keyed by symbol, so each symbol's events stay ordered within one partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from rtml.errors import ConfigError, ServiceError
from rtml.settings import Settings

log = logging.getLogger(__name__)


def dlq(topic: str) -> str:
    """The dead-letter topic of `topic`, where its rejected records go with their reason."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class Topics:
    """rtml's topic names, each behind the settings' optional prefix.

    >>> Topics.of(Settings(topic_prefix="dev.")).trades
    'dev.trades'
    """

    trades: str
    features: str
    examples: str
    predictions: str
    alerts: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        p = settings.topic_prefix
        return cls(p + "trades", p + "features", p + "examples", p + "predictions", p + "alerts")

    def with_dlqs(self) -> list[str]:
        names = [self.trades, self.features, self.examples, self.predictions, self.alerts]
        return [*names, *(dlq(n) for n in names)]


def client_config(settings: Settings) -> dict[str, Any]:
    """Configuration every client shares: address and security, then any librdkafka property
    of `RTML_KAFKA_CONFIG_FILE` and of `RTML_KAFKA__*` variables (which win). Nothing here is
    logged: it may hold secrets."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol,
        # librdkafka's own lines on stderr: warnings and errors, all of them with -v
        "log_level": 7 if log.isEnabledFor(logging.DEBUG) else 4,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username or ""
        password = settings.kafka_sasl_password
        config["sasl.password"] = password.get_secret_value() if password else ""
    if settings.kafka_config_file is not None:
        config.update(read_properties(settings.kafka_config_file))
    config.update(settings.kafka_properties)
    return config


def read_properties(path: Path) -> dict[str, str]:
    """A Java-style properties file, as Kafka's own tools take them (`key=value` lines, `#`
    and `!` comments). Raises ConfigError saying which file and line, when one cannot be read.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".properties", delete=False) as f:
    ...     _ = f.write("# TLS\\nsecurity.protocol=SSL\\nssl.ca.location = /etc/ca.pem\\n")
    >>> read_properties(Path(f.name))
    {'security.protocol': 'SSL', 'ssl.ca.location': '/etc/ca.pem'}
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"RTML_KAFKA_CONFIG_FILE {path} cannot be read: {exc}") from exc
    properties: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith(("#", "!")):
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"{path}:{number} is not `property=value`; write librdkafka properties one a line"
            )
        properties[key.strip()] = value.strip()
    return properties


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return {
        **client_config(settings),
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "none",
        **overrides,
    }


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits only what the caller has fully processed.

    Partition EOF events tell a caller it has caught up: the embedded broker's watermark
    offsets are not reliable enough to compute lag from.
    """
    return {
        **client_config(settings),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "partition.assignment.strategy": "range",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "heartbeat.interval.ms": settings.kafka_heartbeat_interval_ms,
        "max.poll.interval.ms": settings.kafka_max_poll_interval_ms,
        **overrides,
    }


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, **overrides))


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, **overrides))


def ensure_topics(
    settings: Settings, names: Iterable[str], partitions: int | None = None, timeout: float = 10.0
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AdminClient(client_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise ServiceError(
            f"Kafka at {settings.kafka_bootstrap} did not answer ({exc}). "
            "Start the embedded stack with `rtml up`, or set KAFKA_BOOTSTRAP_SERVERS."
        ) from exc
    wanted = [
        NewTopic(
            name,
            num_partitions=partitions or settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
        )
        for name in dict.fromkeys(names)
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result()
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ServiceError(f"could not create topic {name}: {exc}") from exc


class TopicWatch:
    """Notices when the broker has forgotten topics: each one's id changed, or it is gone.

    An embedded broker keeps nothing across a restart, and a topic deleted and re-created on
    a real cluster looks the same. Offsets held in memory or in a checkpoint then point past
    records that do not exist, and a consumer fetching there waits silently for them. Topic
    ids (KIP-516) tell a topic's incarnations apart.
    """

    def __init__(self, settings: Settings, topics: Iterable[str], every_s: float = 2.0) -> None:
        self.topics = list(dict.fromkeys(topics))
        self.every_s = every_s
        self.ids: dict[str, str | None] = {}
        self._admin = AdminClient(client_config(settings))
        self._next = 0.0

    def look(self, timeout: float = 2.0) -> dict[str, str | None]:
        """Each topic's id now, None for a missing one; raises KafkaException if unreachable."""
        from confluent_kafka import TopicCollection

        futures = self._admin.describe_topics(TopicCollection(self.topics), request_timeout=timeout)
        ids: dict[str, str | None] = {}
        for name, future in futures.items():
            try:
                ids[name] = str(future.result(timeout).topic_id)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
                ids[name] = None
        return ids

    def remember(self, timeout: float = 30.0) -> dict[str, str | None]:
        """Take the ids as they are now as the reference; returns them.

        Topics created a moment ago can fail a describe for a while: it is retried.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ids = self.look(timeout=5.0)
                break
            except (KafkaException, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(f"Kafka could not describe {self.topics}: {exc}") from exc
                log.info("describing topics failed (%s); retrying", exc)
                time.sleep(0.5)
        self._next = time.monotonic() + self.every_s
        return self.ids

    def changed(self, now: bool = False) -> list[str]:
        """The topics that are not what they were at the last look, at most every `every_s`
        unless `now`.

        Nothing is reported while the broker cannot be reached: the change shows once it is back.
        """
        if not now and time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + self.every_s
        try:
            current = self.look()
        except (KafkaException, TimeoutError):
            return []
        changed = [t for t in self.topics if t in self.ids and current.get(t) != self.ids[t]]
        self.ids.update(current)
        return changed


def encode(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record)


class Sink(Protocol):
    """Where records go: a Kafka producer, or memory in tests (`rtml.testing.MemorySink`)."""

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def __len__(self) -> int: ...  # records produced and not yet delivered


def send(
    producer: Any,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    timeout: float = 30.0,
    **kwargs: Any,
) -> None:
    """Produce one record; while the producer's local queue is full (a broker slow or away),
    serve its deliveries and try again, for up to `timeout` seconds, rather than fail the
    record. `BufferError` after that: the broker has been away that long."""
    deadline = None
    while True:
        try:
            producer.produce(topic, key=key, value=value, **kwargs)
            return
        except BufferError:
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
                log.warning("the producer's queue is full: waiting for deliveries to %s", topic)
            elif now > deadline:
                raise
            producer.poll(0.1)


def scan(
    settings: Settings,
    topics: Iterable[str],
    visit: Callable[[Message], None],
    timeout: float = 30.0,
    starts: Mapping[tuple[str, int], int] | None = None,
    ends: dict[tuple[str, int], int] | None = None,
) -> list[tuple[str, int]]:
    """Call `visit` with every record of `topics` (all partitions), from their start until each
    partition reports its end; with `starts`, only those partitions, from those offsets. The
    offset each partition ended at goes into `ends`. Partitions are assigned, not
    subscribed: no group to join, and nothing committed. Returns the partitions not read to
    their end within `timeout`."""
    import uuid

    consumer = make_consumer(settings, f"rtml-scan-{uuid.uuid4().hex[:8]}")
    try:
        names = list(dict.fromkeys(topics))
        metadata = consumer.list_topics(timeout=10)
        partitions = [
            TopicPartition(name, p, OFFSET_BEGINNING if starts is None else starts[name, p])
            for name in names
            if name in metadata.topics
            for p in metadata.topics[name].partitions
            if starts is None or (name, p) in starts
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        remaining = {(tp.topic, tp.partition) for tp in partitions}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.2):
                error = msg.error()
                if error is None:
                    visit(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    where = (msg.topic() or "", msg.partition() or 0)
                    remaining.discard(where)
                    if ends is not None and (offset := msg.offset()) is not None:
                        ends[where] = offset
    finally:
        consumer.close()
    return sorted(remaining)


def read_messages(
    settings: Settings, topic: str, timeout: float = 30.0
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) of `topic` (all partitions), read until each partition reports its
    end. For reports, tools and tests."""
    messages: list[tuple[bytes | None, bytes]] = []
    scan(settings, [topic], lambda m: messages.append((m.key(), m.value() or b"null")), timeout)
    return messages


def read_dead_letters(
    settings: Settings, topic: str, timeout: float = 30.0
) -> tuple[list[tuple[bytes | None, dict[str, Any]]], int]:
    """The dead letters on the DLQ `topic` as (key, record), and how many of its records are
    not dead letters (not a JSON object with a reason): a DLQ is a topic like any other, and
    anything a client writes to it must not stop the operator's window onto it."""
    letters: list[tuple[bytes | None, dict[str, Any]]] = []
    foreign = 0
    for key, value in read_messages(settings, topic, timeout):
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "reason" in record:
            letters.append((key, record))
        elif not (isinstance(record, dict) and "replayed" in record):  # `dlq replay`'s marks
            foreign += 1
    return letters, foreign


def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every JSON record of `topic` (all partitions), read until each partition reports its end."""
    return [orjson.loads(value) for _, value in read_messages(settings, topic, timeout)]
