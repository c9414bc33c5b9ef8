"""`rtml status` beyond the stack: rtml's own running services (health, consumer lag, what
they serve) and each model's champion. Quick by design: MLflow and the services are asked
over HTTP with short timeouts, and nothing heavy is imported."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from rtml.presence import Presence, present
from rtml.settings import Settings

TIMEOUT_S = 0.5  # per HTTP question: a service that cannot answer that fast is reported slow
MAX_BODY_BYTES = 64 * 1024  # a health or readiness answer is a few hundred bytes


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            return answer.status, json.loads(answer.read(MAX_BODY_BYTES) or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read(MAX_BODY_BYTES) or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _ends(settings: Settings, partitions: list[Any]) -> dict[tuple[str, int], int]:
    """The next offset of each partition. The high watermark alone would do on Kafka; the
    embedded broker reports its newest batch's first offset there, so that batch is read (one
    fetch) to find its last record."""
    from confluent_kafka import KafkaError, TopicPartition

    from rtml.kafka import make_consumer

    consumer = make_consumer(settings, f"rtml-status-{os.getpid()}", log_level=0)
    try:
        ends: dict[tuple[str, int], int] = {}
        reread = []
        for tp in partitions:
            _, high = consumer.get_watermark_offsets(tp, timeout=1)
            ends[tp.topic, tp.partition] = max(high, 0)
            if high > 0:
                reread.append(TopicPartition(tp.topic, tp.partition, high - 1))
        consumer.assign(reread)
        pending = {(tp.topic, tp.partition) for tp in reread}
        deadline = time.monotonic() + 1.0
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            key = (msg.topic() or "", msg.partition() or 0)
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(key)
                continue
            ends[key] = max(ends.get(key, 0), (msg.offset() or 0) + 1)
        return ends
    finally:
        consumer.close()


def _lag(settings: Settings, services: list[Presence]) -> dict[str, int | None]:
    """Records each consumer group has not committed yet, summed over its topics."""
    groups = {s.group: s.topics for s in services if s.group}
    if not groups:
        return {}
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient

    from rtml.kafka import client_config

    admin = AdminClient({**client_config(settings), "log_level": 0})
    out: dict[str, int | None] = {}
    try:
        listed = admin.list_topics(timeout=1)
        wanted = {
            group: [
                TopicPartition(t, p)
                for t in topics
                if t in listed.topics
                for p in listed.topics[t].partitions
            ]
            for group, topics in groups.items()
        }
        # one read of every partition's end, for all the groups
        every = {(tp.topic, tp.partition): tp for parts in wanted.values() for tp in parts}
        ends = _ends(settings, list(every.values())) if every else {}
        for group, partitions in wanted.items():
            if not partitions:
                out[group] = None
                continue
            asked = ConsumerGroupTopicPartitions(group, partitions)
            committed = admin.list_consumer_group_offsets([asked])[group].result(1)
            out[group] = sum(
                max(0, ends.get((tp.topic, tp.partition), 0) - max(tp.offset, 0))
                for tp in committed.topic_partitions
            )
    except (KafkaException, TimeoutError, KeyError):
        return {g: None for g in groups}
    return out


def service_lines(settings: Settings) -> list[str]:
    """One line per running rtml service: name, state, where, and what it knows."""
    services = present(settings)
    lags = _lag(settings, services) if services else {}
    lines = []
    for s in services:
        up = time.time() - s.started
        where = s.url or f"pid {s.pid}"
        state, notes = "RUNNING", [f"up {up / 60:.0f} min"]
        if s.url is not None:
            code, _ = _get(f"{s.url}/healthz")
            state = "UP" if code == 200 else "DOWN"
            if s.name == "api":
                code, ready = _get(f"{s.url}/readyz")
                if isinstance(ready, dict):
                    serving = ", ".join(
                        f"{m} {'naive baseline' if v == '0' else f'v{v}'}"
                        for m, v in ready.get("serving", {}).items()
                    )
                    notes.append(f"serving {serving or 'nothing yet'}")
                    notes += [str(p) for p in ready.get("problems", [])]
        if s.group is not None:
            lag = lags.get(s.group)
            notes.append(f"group {s.group} lag {'?' if lag is None else f'{lag:,}'}")
        lines.append(f"{s.name:<15} {state:<8} {where:<28} {'; '.join(notes)}")
    return lines or ["no rtml service is running (rtml serve, monitor, features, train, ...)"]


def model_lines(settings: Settings) -> list[str]:
    """Each model's champion and candidate, and who chose the champion, from MLflow's REST API."""
    names = [
        settings.model_copy(update={"shard": shard}).as_shard().model_name
        for shard in settings.shards
    ] or [settings.model_name]
    lines = []
    for name in names:
        query = urllib.parse.urlencode({"name": name})
        code, body = _get(f"{settings.mlflow_uri}/api/2.0/mlflow/registered-models/get?{query}")
        if code == 0:
            lines.append(f"model {name}: MLflow at {settings.mlflow_uri} does not answer")
            continue
        found = (body or {}).get("registered_model") if code == 200 else None
        if found is None:
            lines.append(f"model {name}: champion none (not registered yet: naive baseline served)")
            continue
        aliases = {a["alias"]: a["version"] for a in found.get("aliases", [])}
        tags = {t["key"]: t["value"] for t in found.get("tags", [])}
        champion = aliases.get("champion")
        serving = champion or "none: the predictors serve the naive baseline (no change)"
        line = f"model {name}: champion {serving}, candidate {aliases.get('candidate', 'none')}"
        decision = json.loads(tags.get("rtml.champion_decision", "{}") or "{}")
        if decision:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(decision["at"])))
            line += f"; {decision['action']} by {decision['by']} at {when}"
            if decision.get("pinned"):
                line += ", pinned (`rtml promote --auto` hands it back to the gate)"
        lines.append(line)
    return lines
