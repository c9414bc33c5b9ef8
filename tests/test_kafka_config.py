"""Kafka clients a cluster accepts: any librdkafka property passed through to every client,
and the trainer's position visible to Kafka's own tools."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from rtml.consumers import AssignedSource
from rtml.kafka import client_config, ensure_topics, make_consumer
from rtml.settings import Settings, kafka_passthrough

pytestmark = pytest.mark.integration


def test_a_passed_through_property_reaches_the_broker(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`RTML_KAFKA__CLIENT_ID` names every client rtml makes: the group coordinator names the
    member after it (Kafka's member ids are `<client.id>-<uuid>`, made by the broker)."""
    tag = uuid.uuid4().hex[:6]
    monkeypatch.setenv("RTML_KAFKA__CLIENT_ID", f"rtml-{tag}")
    settings = stack_settings.model_copy(
        update={"kafka_properties": kafka_passthrough({"RTML_KAFKA__CLIENT_ID": f"rtml-{tag}"})}
    )
    assert Settings().kafka_properties == {"client.id": f"rtml-{tag}"}  # read from the variable
    topic = f"pass-{tag}"
    ensure_topics(settings, [topic], partitions=1)
    consumer = make_consumer(settings, f"group-{tag}")
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.2)
        assert (consumer.memberid() or "").startswith(f"rtml-{tag}-"), consumer.memberid()
    finally:
        consumer.close()


def test_the_trainers_offsets_are_committed_to_its_group_for_kafkas_tools(
    stack_settings: Settings,
) -> None:
    """The trainer keeps its offsets in its checkpoint, and also commits them to its group, so
    `kafka-consumer-groups --describe` (here, AdminClient) shows where it is."""
    tag = uuid.uuid4().hex[:6]
    topic, group = f"examples-{tag}", f"rtml-trainer.m{tag}"
    ensure_topics(stack_settings, [topic], partitions=2)
    consumer = make_consumer(stack_settings, group)
    source = AssignedSource(consumer, topic, {0: 0, 1: 0})
    source.start(lambda _: None, lambda _: None, lambda _: None)
    assert source.commit({(topic, 0): 5, (topic, 1): 7})
    admin = AdminClient(client_config(stack_settings))
    wanted = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    )
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while seen != {0: 5, 1: 7} and time.monotonic() < deadline:
        consumer.poll(0.2)  # serves the asynchronous commit
        listed = admin.list_consumer_group_offsets([wanted])[group].result(30)
        seen = {tp.partition: tp.offset for tp in listed.topic_partitions if tp.offset >= 0}
    consumer.close()
    assert seen == {0: 5, 1: 7}
