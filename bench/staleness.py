"""How old the served model is: from a label on the topic to a version the predictor serves."""

from __future__ import annotations

import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.figure import Figure
from bench.measure import percentile
from rtml.kafka import Topics, encode, ensure_topics, make_producer
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.records import Example
from rtml.settings import Settings


def bench_staleness(settings: Settings, seconds: float = 30.0, rate: float = 100.0) -> list[Figure]:
    """From an example's arrival on `examples` to a served model that has learned it.

    A trainer (checkpointing every `checkpoint_interval_s`) and a predictor's model holder
    (polling the champion alias every `model_poll_s`) run as they would in production; examples
    arrive at `rate` per second. The gate replaces a champion only once the candidate has been
    scored on `gate.MIN_EXAMPLES` (50) examples the champion has not learned, so at `rate` that
    alone takes 50 / `rate` seconds, and examples keep arriving until each one measured has
    been served. Reference: one bare MLflow round trip in the same run (log a version, point
    the alias at it, load it back), the least any served update costs.
    """
    from rtml.pipelines.features.indicators import FEATURE_NAMES
    from rtml.pipelines.training.trainer import Trainer
    from rtml.records import Example
    from rtml.serving.model_holder import ModelHolder

    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={
            "topic_prefix": f"stale{tag}.",
            "symbols": (f"T{tag}",),
            "model_name": f"stale-{tag}",
            "checkpoint_every": 10_000,
            "checkpoint_interval_s": 0.5,
            "register_interval_s": 0.0,  # the loop's own latency: each checkpoint a version
            "gate_z": -1e9,  # a margin every candidate clears: measure the path, not the gate
            "gate_alpha": 1.0,
            "max_mae": 1.0,
            "metrics_window": 50,
        }
    )
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    symbol = local.symbols[0]

    def example(i: int) -> Example:
        x = {n: ((i * 7 + k) % 13) / 1000 for k, n in enumerate(FEATURE_NAMES)}  # in bounds
        ts = 1_700_000_000.0 + 60 * i
        return Example(symbol, ts, ts + 300, x, 0.8 * x["ret_1"] - 0.3 * x["ret_5"])

    reference = [_mlflow_round_trip(local, example(i)) for i in range(5)]

    producer = make_producer(local)
    for i in range(100):  # a history the first version learns, so the gate has an error to judge
        producer.produce(topics.examples, key=symbol.encode(), value=encode(example(i).to_json()))
    producer.flush(30)
    trainer = Trainer(local)
    runner = threading.Thread(target=trainer.run, kwargs={"max_seconds": seconds + 60})
    runner.start()
    holder = ModelHolder(local)
    holder.start()
    try:
        staleness = _arrival_to_served(
            producer, topics.examples, holder, example, 100, seconds, rate
        )
    finally:
        trainer.stop.set()
        holder.stop()
        runner.join(60)
    ref = statistics.median(reference)
    p50, p99 = percentile(staleness, 0.5), percentile(staleness, 0.99)
    label = (
        f"{rate:g} examples/s, poll {local.model_poll_s:g} s, "
        f"checkpoint {local.checkpoint_interval_s:g} s"
    )
    return [
        Figure(
            f"staleness p50, example -> served model ({label})",
            p50,
            "s",
            "bare MLflow log+alias+load",
            ref,
            p50 / ref,
            "p50 <= 2 s",
        ),
        Figure(
            f"staleness p99, example -> served model ({label})",
            p99,
            "s",
            "bare MLflow log+alias+load",
            ref,
            p99 / ref,
            "p99 <= 5 s",
        ),
    ]


def _arrival_to_served(
    producer: Any,
    topic: str,
    holder: Any,
    example: Callable[[int], Any],
    first: int,
    seconds: float,
    rate: float,
) -> list[float]:
    """Produce examples from number `first` on at `rate`; for each produced in the first
    `seconds`, the seconds until the served model's trained-through watermark covers its
    label time. Examples go on arriving after that (as a stream does) until each of those is
    served, or 60 s more have passed."""

    def through() -> float:
        """The served model's trained-through time; -inf for none, or the naive baseline
        (which learned nothing: NaN)."""
        current = holder.current
        learned = current.trained_through if current is not None else -math.inf
        return learned if math.isfinite(learned) else -math.inf

    deadline = time.monotonic() + 120
    while through() < example(first - 1).label_ts:
        if time.monotonic() > deadline:
            raise RuntimeError("the trainer never promoted a version that learned the history")
        time.sleep(0.01)
    arrived: dict[float, float] = {}  # label time -> when its example was produced
    staleness: list[float] = []
    served_through = through()
    i, start = first, time.perf_counter()
    next_send = start
    while time.perf_counter() - start < seconds or (
        arrived and time.perf_counter() - start < seconds + 60
    ):
        now = time.perf_counter()
        while now >= next_send:
            ex = example(i)
            producer.produce(topic, key=ex.symbol.encode(), value=encode(ex.to_json()))
            producer.poll(0)
            if now - start < seconds:
                arrived[ex.label_ts] = time.perf_counter()
            i, next_send = i + 1, next_send + 1 / rate
        if (now_through := through()) > served_through:
            served_through, seen = now_through, time.perf_counter()
            for label_ts in [t for t in arrived if t <= served_through]:
                staleness.append(seen - arrived.pop(label_ts))
        time.sleep(0.005)
    if arrived:
        raise RuntimeError(f"{len(arrived)} examples never reached a served model")
    return staleness


def _mlflow_round_trip(settings: Settings, example: Any) -> float:
    """Seconds to log one small model version, point an alias at it and load it back."""
    from rtml import registry
    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model

    name = f"{settings.model_name}-reference"
    learner = Learner(build_model("linear"))
    learner.step(example)
    began = time.perf_counter()
    version = registry.log_version(
        settings,
        learner.model,
        name=name,
        feature_names=FEATURE_NAMES,
        metadata={"trained_through": learner.watermark},
    )
    registry.client(settings).set_registered_model_alias(name, registry.CHAMPION, version)
    registry.load_version(settings, version, name=name)
    return time.perf_counter() - began
