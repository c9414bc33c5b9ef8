"""`rtml status` on a running system: the stack, three services announced with consumer
groups to measure the lag of, and the registry; beside the interpreter starting the CLI."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.figure import Figure
from rtml.kafka import ensure_topics, make_producer
from rtml.settings import Settings


def _seconds(command: list[str], env: dict[str, str], runs: int = 5) -> float:
    took = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True, timeout=60)
        took.append(time.perf_counter() - began)
    return statistics.median(took)


def bench_status(settings: Settings) -> list[Figure]:
    tag = uuid.uuid4().hex[:6]
    topics = [f"status-{tag}-{i}" for i in range(3)]
    ensure_topics(settings, topics, partitions=4)
    producer = make_producer(settings)
    for i in range(3000):
        producer.produce(topics[i % 3], b"x", key=b"%d" % i)
    producer.flush(30)
    env = settings.child_env("state_dir", "kafka_port", "redis_port", "mlflow_port")
    services = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time; from rtml.presence import announce; from rtml.settings import "
                f"Settings; announce(Settings(), 'svc{i}', group='g-{tag}-{i}', "
                f"topics=({topic!r},)); time.sleep(600)",
            ],
            env=env,
        )
        for i, topic in enumerate(topics)
    ]
    try:
        time.sleep(2.0)  # each has announced itself
        rtml = str(Path(sys.executable).parent / "rtml")
        value = _seconds([rtml, "status"], env)
        reference = _seconds([sys.executable, "-c", "import rtml.app.cli"], env)
    finally:
        for service in services:
            service.kill()
            service.wait(10)
    return [
        Figure(
            "rtml status, stack up, 3 services with consumer lag, median of 5",
            value,
            "s",
            "python -c 'import rtml.app.cli'",
            reference,
            value / reference,
            "<= 2 s",
        )
    ]
