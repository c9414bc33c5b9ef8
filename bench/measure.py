"""How a figure and its reference are taken: interleaved runs, best of, percentiles, bare reads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from rtml.kafka import make_consumer
from rtml.settings import Settings


def bare_consume_rate(settings: Settings, topic: str, n: int) -> float:
    """Records/s a bare consumer gets from `topic` (`n` records), touching nothing: what the
    broker delivers to one consumer, the ceiling of anything that reads through it."""
    consumer = make_consumer(settings, f"bare-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    seen = 0
    began = first = time.perf_counter()
    while seen < n and time.perf_counter() - began < 120:
        for msg in consumer.consume(num_messages=1000, timeout=0.2):
            if msg.error() is None:
                if seen == 0:
                    first = time.perf_counter()  # group join and start-up are not throughput
                seen += 1
    consumer.close()
    return seen / (time.perf_counter() - first)


def interleaved(runs: int, *measures: Callable[[], float]) -> list[float]:
    """The best rate of each of `measures` over `runs` rounds, each round running every one
    once, in turn. These machines are shared and their speed drifts by half within a minute:
    a subject and its reference measured apart, or one best of several short runs against one
    long run, would mostly compare moments."""
    best = [0.0] * len(measures)
    for _ in range(runs):
        for i, measure in enumerate(measures):
            best[i] = max(best[i], measure())
    return best


def best_of(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
